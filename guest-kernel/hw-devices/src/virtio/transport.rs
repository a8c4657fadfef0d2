//! The modern virtio-pci transport (virtio 1.2, 4.1.3 and 4.1.4), as `virtio-drivers`'
//! `Transport` over this crate's [`Mmio`] and [`ConfigAccess`].
//!
//! [`PciTransport::probe`] walks the function's capability list (PCI 3.0, 6.7) for the
//! vendor capabilities (ID 0x09) that place the common configuration, the notify
//! addresses, the ISR byte and the device configuration in memory BARs; the first
//! usable instance of each type is taken (4.1.4: "the driver SHOULD use the first
//! instance"), each is checked to lie inside its BAR, and each BAR used is mapped once
//! through the caller's `map`. Every register is then accessed at its natural width
//! (4.1.3.1: `device_status` is a byte beside `config_generation` and `queue_select`, so
//! a 32-bit write would clobber them); 64-bit queue addresses go as two 32-bit halves.
//!
//! The device is hostile: a capability list that loops or points outside configuration
//! space ends the walk; a structure outside its BAR, misaligned or too short is refused
//! ([`ProbeError`]); a `queue_notify_off` whose address falls outside the notify
//! structure marks the transport broken (notifies to it are dropped: virtio-drivers' own
//! PCI transport panics there) and the drivers check [`PciTransport::broken`] after
//! setting the queues up; a device reset that never reads back 0 is bounded
//! ([`RESET_POLLS`]), and so is a configuration generation that never settles
//! ([`GENERATION_CHANGES`]). A device-configuration read outside the structure is
//! `Error::ConfigSpaceTooSmall`, never an access.
//!
//! MSI-X (virtio 1.2, 4.1.4.3 and 4.1.5.1.2; PCI 3.0, 6.8.2): the walk also finds the
//! first MSI-X capability (ID 0x11). [`PciTransport::probe`] checks it (a table size
//! field as read, a table and a pending-bit array that lie inside a memory BAR, which is
//! mapped like the others) and keeps it, or keeps the reason it is unusable
//! ([`MsixError`]: nothing is refused for it; the device then interrupts through INTx).
//! [`PciTransport::enable_msix`] programs table entry 0 with the caller's message and
//! turns MSI-X on: every queue set up afterwards is given vector 0 (one vector shared by
//! all queues; `queue_msix_vector` is read back, and a device that answers `NO_VECTOR`
//! could not take it: [`PciTransport::msix_refused`]), configuration changes get
//! `NO_VECTOR` (none are signalled). While MSI-X is on and no queue was refused
//! ([`PciTransport::msix_active`]) the drivers read no ISR byte: a message is one
//! interrupt and no exit. [`PciTransport::disable_msix`] turns it off again (the
//! fallback to INTx).
//!
//! Not done: the `VIRTIO_PCI_CAP_PCI_CFG` window (a BAR that cannot be mapped is an
//! error), a vector per queue or for configuration changes, `VIRTIO_F_NOTIFICATION_DATA`,
//! per-queue reset.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::device_type_of;
use crate::Mmio;
use crate::pci::{Bar, Bdf, CONFIG_SPACE_SIZE, ConfigAccess, Function, reg, status};

/// `cfg_type` values of `struct virtio_pci_cap` (4.1.4).
pub mod cap {
    /// Common configuration.
    pub const COMMON_CFG: u8 = 1;
    /// Notifications.
    pub const NOTIFY_CFG: u8 = 2;
    /// ISR status.
    pub const ISR_CFG: u8 = 3;
    /// Device-specific configuration.
    pub const DEVICE_CFG: u8 = 4;
    /// PCI configuration access.
    pub const PCI_CFG: u8 = 5;
    /// PCI capability ID of a vendor-specific capability.
    pub const VENDOR: u8 = 0x09;
    /// Offsets in `struct virtio_pci_cap`.
    pub const CAP_LEN: usize = 2;
    /// `cfg_type`.
    pub const CFG_TYPE: usize = 3;
    /// `bar`.
    pub const BAR: usize = 4;
    /// `offset` (32 bits).
    pub const OFFSET: usize = 8;
    /// `length` (32 bits).
    pub const LENGTH: usize = 12;
    /// `notify_off_multiplier` (32 bits) of `struct virtio_pci_notify_cap`.
    pub const NOTIFY_MULTIPLIER: usize = 16;
    /// Size of `struct virtio_pci_cap`.
    pub const SIZE: usize = 16;
    /// Size of `struct virtio_pci_notify_cap`.
    pub const NOTIFY_SIZE: usize = 20;
}

/// Offsets in `struct virtio_pci_common_cfg` (4.1.4.3), with their widths in the names'
/// comments.
pub mod common {
    /// u32.
    pub const DEVICE_FEATURE_SELECT: u32 = 0x00;
    /// u32, read-only.
    pub const DEVICE_FEATURE: u32 = 0x04;
    /// u32.
    pub const DRIVER_FEATURE_SELECT: u32 = 0x08;
    /// u32.
    pub const DRIVER_FEATURE: u32 = 0x0c;
    /// u16.
    pub const MSIX_CONFIG: u32 = 0x10;
    /// u16, read-only.
    pub const NUM_QUEUES: u32 = 0x12;
    /// u8.
    pub const DEVICE_STATUS: u32 = 0x14;
    /// u8, read-only.
    pub const CONFIG_GENERATION: u32 = 0x15;
    /// u16.
    pub const QUEUE_SELECT: u32 = 0x16;
    /// u16.
    pub const QUEUE_SIZE: u32 = 0x18;
    /// u16.
    pub const QUEUE_MSIX_VECTOR: u32 = 0x1a;
    /// u16.
    pub const QUEUE_ENABLE: u32 = 0x1c;
    /// u16, read-only.
    pub const QUEUE_NOTIFY_OFF: u32 = 0x1e;
    /// u64 (two u32 halves).
    pub const QUEUE_DESC: u32 = 0x20;
    /// u64.
    pub const QUEUE_DRIVER: u32 = 0x28;
    /// u64.
    pub const QUEUE_DEVICE: u32 = 0x30;
    /// Bytes up to the end of `queue_device`: what the driver needs.
    pub const MIN_LEN: u32 = 0x38;
}

/// The MSI-X capability and table (PCI 3.0, 6.8.2).
pub mod msix {
    /// Its capability ID.
    pub const CAP_ID: u8 = 0x11;
    /// Offset of message control (16 bits) in the capability.
    pub const CONTROL: usize = 2;
    /// Offset of the table's offset and BIR (32 bits: BIR in bits 2:0).
    pub const TABLE: usize = 4;
    /// Offset of the pending-bit array's offset and BIR.
    pub const PBA: usize = 8;
    /// Bytes of the capability.
    pub const SIZE: usize = 12;
    /// Message control: table size - 1 (bits 10:0).
    pub const TABLE_SIZE_MASK: u16 = 0x7ff;
    /// Message control: function mask.
    pub const FUNCTION_MASK: u16 = 1 << 14;
    /// Message control: MSI-X enable.
    pub const ENABLE: u16 = 1 << 15;
    /// The BIR bits of the table and PBA dwords.
    pub const BIR_MASK: u32 = 0x7;
    /// Bytes of a table entry: address low, address high, data, vector control.
    pub const ENTRY: u32 = 16;
    /// Entry offsets.
    pub const ADDRESS_LOW: u32 = 0;
    /// Address high.
    pub const ADDRESS_HIGH: u32 = 4;
    /// Message data.
    pub const DATA: u32 = 8;
    /// Vector control: bit 0 masks the entry.
    pub const VECTOR_CONTROL: u32 = 12;
    /// Vector control's mask bit.
    pub const MASKED: u32 = 1;
    /// "No vector" in `msix_config` and `queue_msix_vector` (virtio 1.2, 4.1.5.1.2).
    pub const NO_VECTOR: u16 = 0xffff;
    /// The vector every queue is given (one vector shared by all queues).
    pub const QUEUE_VECTOR: u16 = 0;
}

/// Why a function's MSI-X capability is not used (the device then interrupts through
/// INTx).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixError {
    /// The function has no MSI-X capability.
    Absent,
    /// The table's or the pending-bit array's BIR names no memory BAR.
    NotMemoryBar(u8),
    /// The table lies outside its BAR.
    TableOutsideBar,
    /// The pending-bit array lies outside its BAR.
    PbaOutsideBar,
    /// The BAR holding the table could not be mapped.
    Map(u8),
    /// The table is in use: MSI-X is already on.
    AlreadyEnabled,
}

impl fmt::Display for MsixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absent => f.write_str("no MSI-X capability"),
            Self::NotMemoryBar(b) => write!(f, "the MSI-X BIR {b} names no memory BAR"),
            Self::TableOutsideBar => f.write_str("the MSI-X table lies outside its BAR"),
            Self::PbaOutsideBar => f.write_str("the MSI-X pending-bit array lies outside its BAR"),
            Self::Map(b) => write!(f, "the MSI-X table's BAR {b} could not be mapped"),
            Self::AlreadyEnabled => f.write_str("MSI-X is already enabled"),
        }
    }
}

impl core::error::Error for MsixError {}

/// A usable MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Msix {
    /// Where the capability is in configuration space.
    cap: u8,
    /// Entries of the table.
    entries: u16,
    /// The table (in a mapped region).
    table: Window,
}

/// What the transport does with MSI-X.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum MsixState {
    /// Off: INTx and the ISR byte.
    #[default]
    Off,
    /// On: every queue set up is given [`msix::QUEUE_VECTOR`]; `refused` once the
    /// device answered `NO_VECTOR` for one.
    On { refused: bool },
}

/// How many capabilities the walk follows at most (a 256-byte space holds at most 48
/// of 4 bytes above the header): a list that loops ends here.
const MAX_CAPS: usize = 48;
/// Configuration-generation reads in a row that may each find a new value before the
/// device counts as broken (a real device changes it once per configuration update).
pub const GENERATION_CHANGES: u32 = 64;
/// Reads of `device_status` after a reset before the device counts as stuck (4.1.4.3.2:
/// the driver waits for 0).
pub const RESET_POLLS: u32 = 10_000;

/// Why a function could not be driven through this transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// Not a virtio device by its IDs.
    NotVirtio,
    /// A virtio device type `virtio-drivers` does not know.
    UnknownType(u16),
    /// The status register announces no capability list: a legacy-only device.
    NoCapabilities,
    /// A structure of this `cfg_type` was not found: a legacy-only device.
    Missing(u8),
    /// The first structure of this `cfg_type` lies outside its BAR, names no memory
    /// BAR, is misaligned or too short.
    BadStructure(u8),
    /// The caller could not map this BAR.
    Map(u8),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotVirtio => f.write_str("not a virtio device"),
            Self::UnknownType(t) => write!(f, "unknown virtio device type {t}"),
            Self::NoCapabilities => f.write_str("no capability list (a legacy-only device)"),
            Self::Missing(t) => write!(f, "no virtio structure of type {t} (a legacy-only device)"),
            Self::BadStructure(t) => write!(
                f,
                "the virtio structure of type {t} is outside its BAR, misaligned or too short"
            ),
            Self::Map(b) => write!(f, "BAR {b} could not be mapped"),
        }
    }
}

impl core::error::Error for ProbeError {}

/// One structure: which mapped region, where in it, how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    region: usize,
    offset: u32,
    len: u32,
}

/// What the transport knows of each queue it set up.
#[derive(Clone, Copy, Debug, Default)]
struct QueueState {
    /// Offset of its notify address in the notify structure.
    notify_at: Option<u32>,
    /// Guest-physical address of its used ring.
    used: Option<PhysAddr>,
}

struct Inner<M> {
    /// One mapping per BAR used, with the BAR's slot.
    regions: Vec<(u8, M)>,
    common: Window,
    notify: Window,
    isr: Window,
    device: Option<Window>,
    multiplier: u32,
    queues: Vec<QueueState>,
    broken: bool,
    accesses: u64,
    /// The MSI-X capability, or why it is unusable.
    msix: Result<Msix, MsixError>,
    msix_state: MsixState,
    /// ISR reads (each an exit in a VM).
    isr_reads: u64,
    /// The last configuration generation read, and how many reads in a row found it
    /// changed.
    generation: Option<u8>,
    generation_changes: u32,
}

impl<M: Mmio> Inner<M> {
    /// The region and absolute offset of `at..at + width` in `w`, if it fits (callers
    /// pass offsets of their own choosing or checked ones: a miss is a bug, which reads
    /// all ones and writes nothing rather than reach past the structure).
    fn at(&mut self, w: Window, at: u32, width: u32) -> Option<(&mut M, u32)> {
        if at.checked_add(width)? > w.len || !at.is_multiple_of(width) {
            return None;
        }
        self.accesses += 1;
        let m = &mut self.regions.get_mut(w.region)?.1;
        Some((m, w.offset + at))
    }

    fn r8(&mut self, w: Window, at: u32) -> u8 {
        self.at(w, at, 1).map_or(u8::MAX, |(m, o)| m.read8(o))
    }
    fn r16(&mut self, w: Window, at: u32) -> u16 {
        self.at(w, at, 2).map_or(u16::MAX, |(m, o)| m.read16(o))
    }
    fn r32(&mut self, w: Window, at: u32) -> u32 {
        self.at(w, at, 4).map_or(u32::MAX, |(m, o)| m.read32(o))
    }
    fn w8(&mut self, w: Window, at: u32, v: u8) {
        if let Some((m, o)) = self.at(w, at, 1) {
            m.write8(o, v);
        }
    }
    fn w16(&mut self, w: Window, at: u32, v: u16) {
        if let Some((m, o)) = self.at(w, at, 2) {
            m.write16(o, v);
        }
    }
    fn w32(&mut self, w: Window, at: u32, v: u32) {
        if let Some((m, o)) = self.at(w, at, 4) {
            m.write32(o, v);
        }
    }
    fn w64(&mut self, w: Window, at: u32, v: u64) {
        self.w32(w, at, v as u32);
        self.w32(w, at + 4, (v >> 32) as u32);
    }

    fn common8(&mut self, at: u32) -> u8 {
        self.r8(self.common, at)
    }
    fn common16(&mut self, at: u32) -> u16 {
        self.r16(self.common, at)
    }

    fn select(&mut self, queue: u16) {
        self.w16(self.common, common::QUEUE_SELECT, queue);
    }

    fn queue(&mut self, queue: u16) -> &mut QueueState {
        let i = usize::from(queue);
        if self.queues.len() <= i {
            self.queues.resize(i + 1, QueueState::default());
        }
        &mut self.queues[i]
    }
}

/// A virtio device on the modern PCI transport. Clones share the device: a driver
/// keeps one to check the used rings and to reset the device while `virtio-drivers`
/// owns the other.
pub struct PciTransport<M: Mmio> {
    inner: Rc<RefCell<Inner<M>>>,
    device_type: DeviceType,
    num_queues: u16,
}

impl<M: Mmio> Clone for PciTransport<M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            device_type: self.device_type,
            num_queues: self.num_queues,
        }
    }
}

/// The structures found in the capability list: (bar, offset, length) per type, and
/// the notify multiplier.
#[derive(Default)]
struct Found {
    structs: [Option<(u8, u32, u32)>; 4],
    multiplier: u32,
    /// The first MSI-X capability: where, message control, table and PBA dwords.
    msix: Option<(u8, u16, u32, u32)>,
}

/// Walks the capability list of `f` for the first instance of each structure type.
fn walk<C: ConfigAccess + ?Sized>(cfg: &mut C, f: &Function) -> Result<Found, ProbeError> {
    let bdf = f.bdf;
    if cfg.read16(bdf, reg::STATUS as u8) & status::CAPABILITIES_LIST == 0 {
        return Err(ProbeError::NoCapabilities);
    }
    let mut found = Found::default();
    let mut ptr = usize::from(cfg.read8(bdf, reg::CAPABILITIES as u8) & 0xfc);
    for _ in 0..MAX_CAPS {
        // Capabilities live above the 64-byte header; 0 ends the list.
        if ptr < 0x40 || ptr + 2 > CONFIG_SPACE_SIZE {
            break;
        }
        let id = cfg.read8(bdf, ptr as u8);
        let next = usize::from(cfg.read8(bdf, (ptr + 1) as u8) & 0xfc);
        if id == msix::CAP_ID && found.msix.is_none() && ptr + msix::SIZE <= CONFIG_SPACE_SIZE {
            found.msix = Some((
                ptr as u8,
                cfg.read16(bdf, (ptr + msix::CONTROL) as u8),
                cfg.read32(bdf, (ptr + msix::TABLE) as u8),
                cfg.read32(bdf, (ptr + msix::PBA) as u8),
            ));
        }
        if id == cap::VENDOR && ptr + cap::SIZE <= CONFIG_SPACE_SIZE {
            let len = usize::from(cfg.read8(bdf, (ptr + cap::CAP_LEN) as u8));
            let kind = cfg.read8(bdf, (ptr + cap::CFG_TYPE) as u8);
            if (cap::COMMON_CFG..=cap::DEVICE_CFG).contains(&kind)
                && len >= cap::SIZE
                && found.structs[usize::from(kind - 1)].is_none()
            {
                let notify = kind == cap::NOTIFY_CFG;
                if !notify
                    || (len >= cap::NOTIFY_SIZE && ptr + cap::NOTIFY_SIZE <= CONFIG_SPACE_SIZE)
                {
                    let bar = cfg.read8(bdf, (ptr + cap::BAR) as u8);
                    let offset = cfg.read32(bdf, (ptr + cap::OFFSET) as u8);
                    let length = cfg.read32(bdf, (ptr + cap::LENGTH) as u8);
                    found.structs[usize::from(kind - 1)] = Some((bar, offset, length));
                    if notify {
                        found.multiplier = cfg.read32(bdf, (ptr + cap::NOTIFY_MULTIPLIER) as u8);
                    }
                }
            }
        }
        ptr = next;
    }
    Ok(found)
}

/// Checks the MSI-X capability `(cap, control, table, pba)` of `f` against its BARs
/// and maps the table's BAR if no structure did. The device is hostile: a BIR naming no
/// memory BAR (an I/O BAR, an unimplemented slot, the upper half of a 64-bit BAR, 6 or
/// 7), a table or PBA reaching past its BAR, are reasons not to use it, never a panic.
/// The table size field holds entries - 1 (PCI 3.0, 6.8.2.3), so a table has at least
/// the one entry used here.
fn check_msix<M, F>(
    f: &Function,
    (cap, control, table, pba): (u8, u16, u32, u32),
    regions: &mut Vec<(u8, M)>,
    map: &mut F,
) -> Result<Msix, MsixError>
where
    F: FnMut(u8, &Bar) -> Option<M>,
{
    let entries = (control & msix::TABLE_SIZE_MASK) + 1;
    let bar_of = |dword: u32| {
        let bir = (dword & msix::BIR_MASK) as u8;
        f.bars
            .get(usize::from(bir))
            .copied()
            .flatten()
            .filter(Bar::is_memory)
            .map(|b| (bir, b))
            .ok_or(MsixError::NotMemoryBar(bir))
    };
    let (table_bir, table_bar) = bar_of(table)?;
    let (_, pba_bar) = bar_of(pba)?;
    let table_at = table & !msix::BIR_MASK;
    let table_len = u32::from(entries) * msix::ENTRY;
    if u64::from(table_at) + u64::from(table_len) > table_bar.size {
        return Err(MsixError::TableOutsideBar);
    }
    // One bit per entry, in whole quadwords.
    let pba_len = u64::from(entries).div_ceil(64) * 8;
    if u64::from(pba & !msix::BIR_MASK) + pba_len > pba_bar.size {
        return Err(MsixError::PbaOutsideBar);
    }
    let region = match regions.iter().position(|(slot, _)| *slot == table_bir) {
        Some(r) => r,
        None => {
            let m = map(table_bir, &table_bar).ok_or(MsixError::Map(table_bir))?;
            regions.push((table_bir, m));
            regions.len() - 1
        }
    };
    Ok(Msix {
        cap,
        entries,
        table: Window {
            region,
            offset: table_at,
            len: table_len,
        },
    })
}

impl<M: Mmio> PciTransport<M> {
    /// Finds the virtio structures of `f` (read by the boot scan, its memory decode on),
    /// maps each BAR they use with `map(slot, bar)` and returns the transport.
    /// Transitional devices (IDs 0x1000..=0x103f) are taken if they have the
    /// capabilities (are modern-capable); legacy-only ones are
    /// [`ProbeError::NoCapabilities`] or [`ProbeError::Missing`].
    pub fn probe<C, F>(cfg: &mut C, f: &Function, mut map: F) -> Result<Self, ProbeError>
    where
        C: ConfigAccess + ?Sized,
        F: FnMut(u8, &Bar) -> Option<M>,
    {
        let subsystem = cfg.read16(f.bdf, reg::SUBSYSTEM_ID as u8);
        let kind = device_type_of(f.vendor, f.device, subsystem).ok_or(ProbeError::NotVirtio)?;
        let device_type = DeviceType::try_from(kind).map_err(|_| ProbeError::UnknownType(kind))?;
        let found = walk(cfg, f)?;
        let mut regions: Vec<(u8, M)> = Vec::new();
        let mut windows = [None; 4];
        for (i, s) in found.structs.iter().enumerate() {
            let kind = i as u8 + 1;
            let Some((bar, offset, len)) = *s else {
                if kind == cap::DEVICE_CFG {
                    continue;
                }
                return Err(ProbeError::Missing(kind));
            };
            let (align, min) = match kind {
                cap::COMMON_CFG => (4, common::MIN_LEN),
                cap::NOTIFY_CFG => (2, 2),
                cap::ISR_CFG => (1, 1),
                _ => (4, 1),
            };
            let bad = ProbeError::BadStructure(kind);
            let b = f
                .bars
                .get(usize::from(bar))
                .copied()
                .flatten()
                .filter(Bar::is_memory)
                .ok_or(bad)?;
            let end = u64::from(offset) + u64::from(len);
            if len < min || !offset.is_multiple_of(align) || end > b.size {
                return Err(bad);
            }
            let region = match regions.iter().position(|(slot, _)| *slot == bar) {
                Some(r) => r,
                None => {
                    let m = map(bar, &b).ok_or(ProbeError::Map(bar))?;
                    regions.push((bar, m));
                    regions.len() - 1
                }
            };
            windows[i] = Some(Window {
                region,
                offset,
                len,
            });
        }
        let [Some(common), Some(notify), Some(isr), device] = windows else {
            unreachable!("the loop returned for every missing required structure");
        };
        let msix = match found.msix {
            None => Err(MsixError::Absent),
            Some(m) => check_msix(f, m, &mut regions, &mut map),
        };
        let mut inner = Inner {
            regions,
            common,
            notify,
            isr,
            device,
            multiplier: found.multiplier,
            queues: Vec::new(),
            broken: false,
            accesses: 0,
            msix,
            msix_state: MsixState::Off,
            isr_reads: 0,
            generation: None,
            generation_changes: 0,
        };
        let num_queues = inner.common16(common::NUM_QUEUES);
        Ok(Self {
            inner: Rc::new(RefCell::new(inner)),
            device_type,
            num_queues,
        })
    }

    /// Queues the device says it has.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Whether the device broke the transport's rules (a notify address outside the
    /// notify structure, a reset that never completed).
    pub fn broken(&self) -> bool {
        self.inner.borrow().broken
    }

    /// Register accesses made (each one a vCPU exit in a VM).
    pub fn accesses(&self) -> u64 {
        self.inner.borrow().accesses
    }

    /// ISR reads made (`ack_interrupt`; none while [`Self::msix_active`]).
    pub fn isr_reads(&self) -> u64 {
        self.inner.borrow().isr_reads
    }

    /// The MSI-X table's entries, or why MSI-X cannot be used.
    pub fn msix_available(&self) -> Result<u16, MsixError> {
        self.inner.borrow().msix.map(|m| m.entries)
    }

    /// Turns MSI-X on with `address`/`data` as the message of entry 0, the one vector
    /// every queue set up from now on is given (call before the driver sets the device
    /// up). The function is masked while its entry is written (PCI 3.0, 6.8.3.5), the
    /// entry is unmasked, then MSI-X is enabled with the function mask clear. With
    /// MSI-X on the device does not assert INTx (PCI 3.0, 6.8.2.3).
    pub fn enable_msix<C: ConfigAccess + ?Sized>(
        &self,
        cfg: &mut C,
        bdf: Bdf,
        address: u64,
        data: u32,
    ) -> Result<(), MsixError> {
        let mut i = self.inner.borrow_mut();
        let m = i.msix?;
        if i.msix_state != MsixState::Off {
            return Err(MsixError::AlreadyEnabled);
        }
        let at = m.cap + msix::CONTROL as u8;
        let control = cfg.read16(bdf, at) & !(msix::ENABLE | msix::FUNCTION_MASK);
        cfg.write16(bdf, at, control | msix::ENABLE | msix::FUNCTION_MASK);
        let e = u32::from(msix::QUEUE_VECTOR) * msix::ENTRY;
        i.w32(m.table, e + msix::ADDRESS_LOW, address as u32);
        i.w32(m.table, e + msix::ADDRESS_HIGH, (address >> 32) as u32);
        i.w32(m.table, e + msix::DATA, data);
        i.w32(m.table, e + msix::VECTOR_CONTROL, 0);
        cfg.write16(bdf, at, control | msix::ENABLE);
        i.msix_state = MsixState::On { refused: false };
        Ok(())
    }

    /// Turns MSI-X off (the fallback to INTx, e.g. after [`Self::msix_refused`]): the
    /// device interrupts through INTx and the ISR byte again, which the drivers then
    /// read in every poll.
    pub fn disable_msix<C: ConfigAccess + ?Sized>(&self, cfg: &mut C, bdf: Bdf) {
        let mut i = self.inner.borrow_mut();
        if let Ok(m) = i.msix {
            let at = m.cap + msix::CONTROL as u8;
            let control = cfg.read16(bdf, at);
            cfg.write16(bdf, at, control & !msix::ENABLE);
            let e = u32::from(msix::QUEUE_VECTOR) * msix::ENTRY;
            i.w32(m.table, e + msix::VECTOR_CONTROL, msix::MASKED);
        }
        i.msix_state = MsixState::Off;
    }

    /// Whether MSI-X is on and every queue took its vector: the device's interrupts
    /// are messages, and the drivers read no ISR byte.
    pub fn msix_active(&self) -> bool {
        self.inner.borrow().msix_state == MsixState::On { refused: false }
    }

    /// Whether MSI-X is on but the device answered `NO_VECTOR` for a queue's vector
    /// (it could not allocate it): that queue would never interrupt, so the caller
    /// falls back to INTx ([`Self::disable_msix`]).
    pub fn msix_refused(&self) -> bool {
        self.inner.borrow().msix_state == MsixState::On { refused: true }
    }

    /// The guest-physical address of queue `queue`'s used ring, once set up.
    pub fn used_ring(&self, queue: u16) -> Option<PhysAddr> {
        self.inner
            .borrow()
            .queues
            .get(usize::from(queue))
            .and_then(|q| q.used)
    }

    /// Resets the device (status 0) and waits, bounded, for it to read back 0; then
    /// forgets the queues. Returns whether the reset completed: only then has the
    /// device stopped using the queues' memory.
    pub fn reset(&mut self) -> bool {
        self.set_status(DeviceStatus::empty());
        let mut inner = self.inner.borrow_mut();
        inner.queues.clear();
        !inner.broken
    }

    /// Sets `FAILED` in the status (3.1.1: the driver gave up on the device).
    pub fn fail(&mut self) {
        let mut inner = self.inner.borrow_mut();
        let s = inner.common8(common::DEVICE_STATUS);
        let w = inner.common;
        inner.w8(
            w,
            common::DEVICE_STATUS,
            s | DeviceStatus::FAILED.bits() as u8,
        );
    }
}

impl<M: Mmio> Transport for PciTransport<M> {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        let mut i = self.inner.borrow_mut();
        let c = i.common;
        i.w32(c, common::DEVICE_FEATURE_SELECT, 0);
        let low = i.r32(c, common::DEVICE_FEATURE);
        i.w32(c, common::DEVICE_FEATURE_SELECT, 1);
        let high = i.r32(c, common::DEVICE_FEATURE);
        u64::from(high) << 32 | u64::from(low)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        let mut i = self.inner.borrow_mut();
        let c = i.common;
        i.w32(c, common::DRIVER_FEATURE_SELECT, 0);
        i.w32(c, common::DRIVER_FEATURE, driver_features as u32);
        i.w32(c, common::DRIVER_FEATURE_SELECT, 1);
        i.w32(c, common::DRIVER_FEATURE, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        if queue >= self.num_queues {
            return 0;
        }
        let mut i = self.inner.borrow_mut();
        i.select(queue);
        u32::from(i.common16(common::QUEUE_SIZE))
    }

    fn notify(&mut self, queue: u16) {
        let mut i = self.inner.borrow_mut();
        let at = i.queues.get(usize::from(queue)).and_then(|q| q.notify_at);
        if let Some(at) = at {
            let w = i.notify;
            i.w16(w, at, queue);
        }
    }

    fn get_status(&self) -> DeviceStatus {
        let s = self.inner.borrow_mut().common8(common::DEVICE_STATUS);
        DeviceStatus::from_bits_retain(u32::from(s))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut i = self.inner.borrow_mut();
        let c = i.common;
        i.w8(c, common::DEVICE_STATUS, status.bits() as u8);
        if status.is_empty() {
            // 4.1.4.3.2: after writing 0 the driver waits for 0 before reinitialising.
            let done = (0..RESET_POLLS).any(|_| i.common8(common::DEVICE_STATUS) == 0);
            if !done {
                i.broken = true;
            }
        }
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {
        // Legacy MMIO only.
    }

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let mut i = self.inner.borrow_mut();
        let c = i.common;
        i.select(queue);
        i.w16(c, common::QUEUE_SIZE, size as u16);
        i.w64(c, common::QUEUE_DESC, descriptors);
        i.w64(c, common::QUEUE_DRIVER, driver_area);
        i.w64(c, common::QUEUE_DEVICE, device_area);
        // 4.1.4.4: the notify address is cap.offset + queue_notify_off * multiplier;
        // the device chooses both, so the result is checked against the structure.
        let off = u64::from(i.common16(common::QUEUE_NOTIFY_OFF));
        let at = off * u64::from(i.multiplier);
        let notify_len = u64::from(i.notify.len);
        let notify_at = (at + 2 <= notify_len && at.is_multiple_of(2)).then_some(at as u32);
        if notify_at.is_none() {
            i.broken = true;
        }
        if let MsixState::On { refused } = i.msix_state {
            // 4.1.5.1.2: the driver writes the vector and reads it back; NO_VECTOR means
            // the device could not allocate it. Configuration changes get none.
            i.w16(c, common::MSIX_CONFIG, msix::NO_VECTOR);
            i.w16(c, common::QUEUE_MSIX_VECTOR, msix::QUEUE_VECTOR);
            let took = i.common16(common::QUEUE_MSIX_VECTOR) == msix::QUEUE_VECTOR;
            i.msix_state = MsixState::On {
                refused: refused || !took,
            };
        }
        *i.queue(queue) = QueueState {
            notify_at,
            used: Some(device_area),
        };
        i.w16(c, common::QUEUE_ENABLE, 1);
    }

    fn queue_unset(&mut self, queue: u16) {
        // A modern device's queue is only disabled by a reset (4.1.4.3.2: the driver
        // MUST NOT write 0 to queue_enable); the drivers reset the device before they
        // free the rings. Forget the queue so nothing notifies it.
        let mut i = self.inner.borrow_mut();
        if let Some(q) = i.queues.get_mut(usize::from(queue)) {
            *q = QueueState::default();
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        let mut i = self.inner.borrow_mut();
        i.select(queue);
        i.common16(common::QUEUE_ENABLE) != 0
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let mut i = self.inner.borrow_mut();
        let w = i.isr;
        i.isr_reads += 1;
        InterruptStatus::from_bits_retain(u32::from(i.r8(w, 0)))
    }

    /// A generation that changes on every read would keep `read_consistent` (which
    /// `VirtIONetRaw::new` calls) looping: after [`GENERATION_CHANGES`] changed reads in
    /// a row the transport is broken and the generation reads as its last value.
    fn read_config_generation(&self) -> u32 {
        let mut i = self.inner.borrow_mut();
        if i.broken
            && let Some(g) = i.generation
        {
            return u32::from(g);
        }
        let g = i.common8(common::CONFIG_GENERATION);
        if i.generation.is_some_and(|last| last != g) {
            i.generation_changes += 1;
            if i.generation_changes > GENERATION_CHANGES {
                i.broken = true;
                return u32::from(i.generation.unwrap_or(g));
            }
        } else {
            i.generation_changes = 0;
        }
        i.generation = Some(g);
        u32::from(g)
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        let mut i = self.inner.borrow_mut();
        let w = i.device.ok_or(Error::ConfigSpaceMissing)?;
        let size = core::mem::size_of::<T>();
        let start = u32::try_from(offset).map_err(|_| Error::ConfigSpaceTooSmall)?;
        if u64::from(start) + size as u64 > u64::from(w.len) {
            return Err(Error::ConfigSpaceTooSmall);
        }
        let mut value = T::new_zeroed();
        let bytes = value.as_mut_bytes();
        let mut at = 0usize;
        // Natural widths where the field allows (4.1.3.1), bytes elsewhere.
        while at < size {
            let o = start + at as u32;
            let left = size - at;
            if left >= 4 && o.is_multiple_of(4) {
                bytes[at..at + 4].copy_from_slice(&i.r32(w, o).to_le_bytes());
                at += 4;
            } else if left >= 2 && o.is_multiple_of(2) {
                bytes[at..at + 2].copy_from_slice(&i.r16(w, o).to_le_bytes());
                at += 2;
            } else {
                bytes[at] = i.r8(w, o);
                at += 1;
            }
        }
        Ok(value)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), Error> {
        let mut i = self.inner.borrow_mut();
        let w = i.device.ok_or(Error::ConfigSpaceMissing)?;
        let bytes = value.as_bytes();
        let start = u32::try_from(offset).map_err(|_| Error::ConfigSpaceTooSmall)?;
        if u64::from(start) + bytes.len() as u64 > u64::from(w.len) {
            return Err(Error::ConfigSpaceTooSmall);
        }
        let mut at = 0usize;
        while at < bytes.len() {
            let o = start + at as u32;
            let left = bytes.len() - at;
            if left >= 4 && o.is_multiple_of(4) {
                let v =
                    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
                i.w32(w, o, v);
                at += 4;
            } else if left >= 2 && o.is_multiple_of(2) {
                i.w16(w, o, u16::from_le_bytes([bytes[at], bytes[at + 1]]));
                at += 2;
            } else {
                i.w8(w, o, bytes[at]);
                at += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{Bar, BarKind, Bdf, Function};
    use alloc::vec;
    use std::cell::RefCell as StdRefCell;
    use std::rc::Rc as StdRc;

    /// A configuration space in a byte array.
    struct Space([u8; 256]);

    impl ConfigAccess for Space {
        fn read32(&mut self, _: Bdf, offset: u8) -> u32 {
            let o = usize::from(offset & 0xfc);
            u32::from_le_bytes(self.0[o..o + 4].try_into().unwrap())
        }
        fn write32(&mut self, _: Bdf, offset: u8, value: u32) {
            let o = usize::from(offset & 0xfc);
            self.0[o..o + 4].copy_from_slice(&value.to_le_bytes());
        }
        fn write16(&mut self, _: Bdf, offset: u8, value: u16) {
            let o = usize::from(offset & 0xfe);
            self.0[o..o + 2].copy_from_slice(&value.to_le_bytes());
        }
    }

    /// A BAR that records every access (offset, width, write) and reads back what was
    /// written, byte by byte.
    #[derive(Clone)]
    struct Recorder {
        log: StdRc<StdRefCell<Vec<(u32, u32, bool)>>>,
        mem: StdRc<StdRefCell<Vec<u8>>>,
    }

    impl Recorder {
        fn get(&self, o: u32, w: u32) -> u64 {
            self.log.borrow_mut().push((o, w, false));
            let m = self.mem.borrow();
            let mut b = [0u8; 8];
            b[..w as usize].copy_from_slice(&m[o as usize..(o + w) as usize]);
            u64::from_le_bytes(b)
        }
        fn set(&self, o: u32, w: u32, v: u64) {
            self.log.borrow_mut().push((o, w, true));
            self.mem.borrow_mut()[o as usize..(o + w) as usize]
                .copy_from_slice(&v.to_le_bytes()[..w as usize]);
        }
    }

    impl Mmio for Recorder {
        fn read32(&mut self, o: u32) -> u32 {
            self.get(o, 4) as u32
        }
        fn write32(&mut self, o: u32, v: u32) {
            self.set(o, 4, v.into())
        }
        fn read16(&mut self, o: u32) -> u16 {
            self.get(o, 2) as u16
        }
        fn write16(&mut self, o: u32, v: u16) {
            self.set(o, 2, v.into())
        }
        fn read8(&mut self, o: u32) -> u8 {
            self.get(o, 1) as u8
        }
        fn write8(&mut self, o: u32, v: u8) {
            self.set(o, 1, v.into())
        }
    }

    /// QEMU's layout: the four structures in BAR 4 at 0, 0x1000, 0x2000, 0x3000.
    fn device() -> (Space, Function) {
        let mut s = [0u8; 256];
        s[0x06] = 0x10; // capability list
        s[0x34] = 0x40;
        // (at, cfg_type, offset, length), each linked to the next.
        let caps = [
            (0x40, cap::COMMON_CFG, 0x0, 0x38),
            (0x50, cap::ISR_CFG, 0x1000, 1),
            (0x60, cap::DEVICE_CFG, 0x2000, 0x100),
            (0x70, cap::NOTIFY_CFG, 0x3000, 0x1000),
        ];
        for (i, (at, kind, offset, length)) in caps.into_iter().enumerate() {
            let next = caps.get(i + 1).map_or(0, |c| c.0);
            let len = if kind == cap::NOTIFY_CFG { 20 } else { 16 };
            s[at..at + 4].copy_from_slice(&[cap::VENDOR, next as u8, len, kind]);
            s[at + 4] = 4;
            s[at + 8..at + 12].copy_from_slice(&(offset as u32).to_le_bytes());
            s[at + 12..at + 16].copy_from_slice(&(length as u32).to_le_bytes());
            if kind == cap::NOTIFY_CFG {
                s[at + 16..at + 20].copy_from_slice(&4u32.to_le_bytes());
            }
        }
        let mut bars = [None; 6];
        bars[4] = Some(Bar {
            kind: BarKind::Mem64,
            address: 0xfe00_0000,
            size: 0x4000,
            prefetchable: true,
        });
        let f = Function {
            bdf: Bdf::new(0, 4, 0),
            vendor: super::super::VENDOR,
            device: 0x1042,
            revision: 1,
            class: 1,
            subclass: 0,
            prog_if: 0,
            header_type: 0,
            multifunction: false,
            bars,
            interrupt_line: 11,
            interrupt_pin: 1,
        };
        (Space(s), f)
    }

    #[test]
    fn every_register_is_accessed_at_its_own_width() {
        let (mut space, f) = device();
        let bar = Recorder {
            log: Default::default(),
            mem: StdRc::new(StdRefCell::new(vec![0; 0x4000])),
        };
        // Two queues of up to 256 entries.
        bar.set(common::NUM_QUEUES, 2, 2);
        let mut slots = Vec::new();
        let mut t = PciTransport::probe(&mut space, &f, |slot, b| {
            slots.push((slot, b.size));
            Some(bar.clone())
        })
        .expect("probe");
        assert_eq!(slots, [(4, 0x4000)], "one mapping for the one BAR");
        assert_eq!(t.device_type(), DeviceType::Block);
        assert_eq!(t.num_queues(), 2);
        bar.set(common::QUEUE_SIZE, 2, 256);
        bar.set(common::QUEUE_NOTIFY_OFF, 2, 1);
        bar.log.borrow_mut().clear();

        t.set_status(DeviceStatus::ACKNOWLEDGE);
        let _ = t.get_status();
        let _ = t.read_config_generation();
        assert_eq!(t.max_queue_size(1), 256);
        assert_eq!(t.max_queue_size(2), 0, "no third queue");
        t.queue_set(1, 128, 0x1_2345_6000, 0x1_2345_7000, 0x8000);
        t.notify(1);
        let _ = t.ack_interrupt();
        let cap: u64 = t.read_config_space(0).unwrap();
        let _ = cap;
        let log = bar.log.borrow().clone();
        let width = |o: u32| {
            let ws: Vec<u32> = log.iter().filter(|a| a.0 == o).map(|a| a.1).collect();
            assert!(!ws.is_empty(), "{o:#x} never accessed: {log:x?}");
            ws
        };
        for (o, w) in [
            (common::DEVICE_STATUS, 1),
            (common::CONFIG_GENERATION, 1),
            (common::QUEUE_SELECT, 2),
            (common::QUEUE_SIZE, 2),
            (common::QUEUE_ENABLE, 2),
            (common::QUEUE_NOTIFY_OFF, 2),
            (common::QUEUE_DESC, 4),
            (common::QUEUE_DESC + 4, 4),
            (common::QUEUE_DRIVER, 4),
            (common::QUEUE_DEVICE, 4),
            (0x1000, 1),
            // The notify address of queue 1: offset 1 * multiplier 4.
            (0x3004, 2),
            // Device configuration: a u64 as two 32-bit reads.
            (0x2000, 4),
            (0x2004, 4),
        ] {
            assert!(width(o).iter().all(|&x| x == w), "{o:#x}: {log:x?}");
        }
        // Nothing but the registers named: no access straddles a neighbour.
        assert!(
            log.iter().all(|(o, w, _)| o % w == 0),
            "misaligned: {log:x?}"
        );
        let m = bar.mem.borrow();
        assert_eq!(&m[0x20..0x28], &0x1_2345_6000u64.to_le_bytes());
        assert_eq!(
            &m[0x3004..0x3006],
            &1u16.to_le_bytes(),
            "notify names the queue"
        );
        assert_eq!(m[common::QUEUE_ENABLE as usize], 1);
        assert_eq!(t.used_ring(1), Some(0x8000));
        assert!(!t.broken());
    }

    #[test]
    fn config_space_reads_stay_inside_the_structure() {
        let (mut space, f) = device();
        let bar = Recorder {
            log: Default::default(),
            mem: StdRc::new(StdRefCell::new(vec![0; 0x4000])),
        };
        let t = PciTransport::probe(&mut space, &f, |_, _| Some(bar.clone())).unwrap();
        assert!(t.read_config_space::<u32>(0xfc).is_ok());
        assert_eq!(
            t.read_config_space::<u32>(0xfd),
            Err(Error::ConfigSpaceTooSmall)
        );
        assert_eq!(
            t.read_config_space::<u64>(usize::MAX),
            Err(Error::ConfigSpaceTooSmall)
        );
        // A 6-byte MAC at an odd offset: byte and word reads only where aligned.
        bar.log.borrow_mut().clear();
        let _: [u8; 6] = t.read_config_space(1).unwrap();
        let log = bar.log.borrow().clone();
        assert_eq!(
            log.iter().map(|a| (a.0 - 0x2000, a.1)).collect::<Vec<_>>(),
            [(1, 1), (2, 2), (4, 2), (6, 1)]
        );
    }

    /// `device()` with an MSI-X capability at 0x80 (after the notify capability):
    /// `entries` - 1 in message control, table and PBA dwords as given.
    fn with_msix(control: u16, table: u32, pba: u32) -> (Space, Function) {
        let (mut space, f) = device();
        space.0[0x71] = 0x80;
        space.0[0x80..0x84].copy_from_slice(&[msix::CAP_ID, 0, 0, 0]);
        space.0[0x82..0x84].copy_from_slice(&control.to_le_bytes());
        space.0[0x84..0x88].copy_from_slice(&table.to_le_bytes());
        space.0[0x88..0x8c].copy_from_slice(&pba.to_le_bytes());
        (space, f)
    }

    fn bar() -> Recorder {
        Recorder {
            log: Default::default(),
            mem: StdRc::new(StdRefCell::new(vec![0; 0x4000])),
        }
    }

    #[test]
    fn msix_entry_zero_is_programmed_and_every_queue_given_vector_zero() {
        // Three entries: table at 0x3800 in BAR 4, PBA at 0x3c00 (QEMU puts them in a
        // BAR of their own; the same BAR is mapped once).
        let (mut space, f) = with_msix(2, 0x3800 | 4, 0x3c00 | 4);
        let bar = bar();
        bar.set(common::NUM_QUEUES, 2, 2);
        let mut maps = 0;
        let mut t = PciTransport::probe(&mut space, &f, |_, _| {
            maps += 1;
            Some(bar.clone())
        })
        .unwrap();
        assert_eq!(maps, 1);
        assert_eq!(t.msix_available(), Ok(3));
        assert!(!t.msix_active());
        t.enable_msix(&mut space, f.bdf, 0xfee0_1000, 0x61).unwrap();
        assert_eq!(
            t.enable_msix(&mut space, f.bdf, 0xfee0_1000, 0x61),
            Err(MsixError::AlreadyEnabled)
        );
        let control = u16::from_le_bytes([space.0[0x82], space.0[0x83]]);
        assert_eq!(control & (msix::ENABLE | msix::FUNCTION_MASK), msix::ENABLE);
        assert_eq!(
            control & msix::TABLE_SIZE_MASK,
            2,
            "the size field is read-only"
        );
        {
            let m = bar.mem.borrow();
            let word = |o: usize| u32::from_le_bytes(m[o..o + 4].try_into().unwrap());
            assert_eq!(
                [word(0x3800), word(0x3804), word(0x3808), word(0x380c)],
                [0xfee0_1000, 0, 0x61, 0],
                "entry 0: address, data, unmasked"
            );
        }
        bar.set(common::QUEUE_SIZE, 2, 256);
        bar.set(common::MSIX_CONFIG, 2, 7);
        t.queue_set(0, 128, 0x10000, 0x11000, 0x12000);
        assert!(t.msix_active(), "the vector read back");
        assert_eq!(bar.get(common::QUEUE_MSIX_VECTOR, 2), 0);
        assert_eq!(bar.get(common::MSIX_CONFIG, 2), u64::from(msix::NO_VECTOR));
        // The poll then reads no ISR; with MSI-X off again it does.
        let before = t.isr_reads();
        t.disable_msix(&mut space, f.bdf);
        assert!(!t.msix_active() && !t.msix_refused());
        let control = u16::from_le_bytes([space.0[0x82], space.0[0x83]]);
        assert_eq!(control & msix::ENABLE, 0);
        assert_eq!(bar.get(0x380c, 4) & 1, 1, "entry 0 masked again");
        let _ = t.ack_interrupt();
        assert_eq!(t.isr_reads(), before + 1);
    }

    #[test]
    fn hostile_msix_capabilities_leave_the_device_on_intx() {
        let mut io = device().1.bars;
        io[2] = Some(Bar {
            kind: BarKind::Io,
            address: 0xc000,
            size: 0x40,
            prefetchable: false,
        });
        for (control, table, pba, io_bar, why) in [
            // Table past the 0x4000-byte BAR (two entries from 0x3ff0).
            (1, 0x3ff0 | 4, 0x3000 | 4, false, MsixError::TableOutsideBar),
            // Offset beyond the BAR altogether.
            (
                0,
                0xffff_fff0 | 4,
                0x3000 | 4,
                false,
                MsixError::TableOutsideBar,
            ),
            // 2048 entries do not fit.
            (0x7ff, 4, 0x3000 | 4, false, MsixError::TableOutsideBar),
            (0, 0x3000 | 4, 0x4000 | 4, false, MsixError::PbaOutsideBar),
            // An empty slot, the I/O BAR, BIRs 6 and 7 (reserved).
            (0, 0x3000, 0x3800 | 4, false, MsixError::NotMemoryBar(0)),
            (0, 0x3000 | 2, 0x3800 | 4, true, MsixError::NotMemoryBar(2)),
            (0, 0x3000 | 4, 0x3800 | 6, false, MsixError::NotMemoryBar(6)),
            (0, 0x3000 | 7, 0x3800 | 4, false, MsixError::NotMemoryBar(7)),
        ] {
            let (mut space, mut f) = with_msix(control, table, pba);
            if io_bar {
                f.bars = io;
            }
            let bar = bar();
            let t = PciTransport::probe(&mut space, &f, |_, _| Some(bar.clone()))
                .expect("the virtio structures are fine");
            assert_eq!(
                t.msix_available(),
                Err(why),
                "{control:#x} {table:#x} {pba:#x}"
            );
            assert_eq!(
                t.enable_msix(&mut space, f.bdf, 0xfee0_0000, 0x60),
                Err(why)
            );
            assert_eq!(space.0[0x83] & 0xc0, 0, "MSI-X left off");
            assert!(!t.msix_active());
        }
        // No capability at all; one whose table's BAR cannot be mapped.
        let (mut space, f) = device();
        let t = PciTransport::probe(&mut space, &f, |_, _| Some(bar())).unwrap();
        assert_eq!(t.msix_available(), Err(MsixError::Absent));
        let (mut space, mut f) = with_msix(0, 0x3000 | 1, 0x3800 | 1);
        f.bars[1] = f.bars[4];
        let t = PciTransport::probe(&mut space, &f, |slot, _| (slot == 4).then(bar)).unwrap();
        assert_eq!(t.msix_available(), Err(MsixError::Map(1)));
    }
}
