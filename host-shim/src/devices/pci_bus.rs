//! PCI bus 0 of a PC: configuration mechanism #1 (PCI Local Bus Specification 3.0,
//! 3.2.2.3.2: the address register at 0xCF8, data at 0xCFC..0xD00), the functions on
//! it, the mapping of their BARs onto the port and memory [`Bus`]es, firmware-style
//! initial BAR assignment and the INTx routing.
//!
//! # Layout (QEMU's `-M pc`)
//! | address | function |
//! |---|---|
//! | 00:00.0 | i440FX host bridge (8086:1237), [`super::pci_chipset::HostBridge`] |
//! | 00:01.0 | PIIX3 ISA bridge (8086:7000, multi-function), [`super::pci_chipset::Piix3Isa`] |
//! | 00:01.1 | the PIIX3 IDE controller, when one is added there |
//! | 00:03.0.. | further devices (NICs), one device number each ([`FIRST_FREE_DEVICE`]) |
//!
//! # Configuration mechanism #1
//! Only a 32-bit access to 0xCF8 reaches the address register, as on the i440FX
//! (byte accesses to 0xCF8..0xCFB are other registers on a real chipset; here they read
//! all ones and are dropped). Data accesses of 1, 2 or 4 bytes at 0xCFC + n reach
//! register `(address & 0xFC) + n`; bytes of an access past 0xCFF read all ones. With
//! the enable bit (31) clear, on a bus other than 0, or for an absent function, reads
//! return all ones (vendor 0xFFFF: "nothing here") and writes are dropped.
//!
//! # BARs
//! A function's BARs are on the bus while its configuration header says they decode
//! ([`super::pci::ConfigSpace::mapped_bars`]). After every configuration write the bus
//! compares that with what it mapped, for every function: stale ranges are removed
//! first, then the wanted ones inserted, each as a [`BarRegion`] that forwards to
//! `region_read`/`region_write` of the model. A BAR that would overlap another device,
//! a reserved range (guest RAM, the IOAPIC and LAPIC pages: [`PciBus::reserve`]) or the
//! function's own other BARs stays unmapped (as if the guest had put it nowhere) and is
//! counted in `bar_conflicts`; it is mapped as soon as a later write makes room.
//! Fixed legacy ranges ([`super::pci::PciDevice::legacy_ranges`]) are mapped once, when
//! the function is added, whatever its command register says.
//!
//! Locking, and why moving a BAR from inside an access cannot deadlock: the data port
//! is a device on the port bus, so a configuration write arrives through
//! [`Bus::write`], which has already released the bus's map when it locks the PCI host
//! (the buses are internally synchronized, see [`Bus`]). The host then locks one model
//! at a time to forward the write and read its header, releases it, and only then
//! takes the buses' map locks to move ranges. The order is always PCI host, then one
//! model, then (with the model released) a bus map; a [`BarRegion`] locks only its
//! model; nothing locks the PCI host while holding a model or a map.
//!
//! # Initial addresses (what firmware would have done)
//! Our guest does not program BARs, so [`PciBus::add`] does what SeaBIOS does before
//! the OS runs: it sizes each BAR (write all ones, read back), assigns it an address
//! aligned to its size (I/O from 0xC000; memory up to 1 MiB apiece from 0xFEB00000 up
//! to the IOAPIC at 0xFEC00000, larger ones from 0xE0000000, above the at most 3 GiB
//! of low RAM and below the special pages at 0xFEFF8000), turns on I/O and memory
//! decode and bus mastering, and writes the interrupt line register.
//!
//! # Interrupt routing
//! PCI INTx is level-triggered and active low, and shared lines need the OR of their
//! devices' levels. Rather than routing through the PIIX3 PIRQ links to ISA IRQs
//! (which the ISA devices and the 8259 also use), INTA..INTD of device `d` go to
//! IOAPIC pins 16..23: GSI `16 + (d + pin - 1) % 8` ([`intx_gsi`]), the usual swizzle
//! over eight lines. The in-kernel IOAPIC has 24 pins and KVM's default routing maps
//! GSI n to pin n for n >= 16, with no 8259 behind them. The MP table describes the
//! same routing (bus PCI, IRQ `(d << 2) | (pin - 1)`, level, active low), which Linux
//! reads; our own guest reads the GSI from the interrupt line register and programs
//! that IOAPIC pin (level, active low: KVM ignores the polarity bit and takes
//! `KVM_IRQ_LINE` level 1 as asserted, see `arch/x86/kvm/ioapic.c`). The PIIX3's PIRQ
//! route registers read "disabled" (0x80), so an OS does not route through them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use hw_devices::pci::{BAR_COUNT, CONFIG_ENABLE, bar, bar_offset, command, config_address, reg};
use serde::Serialize;

use super::pci::{BarKind, MappedBar, PciDevice, SharedPciDevice};
use super::pci_chipset::{HostBridge, Piix3Isa};
use super::{Action, Bus, BusDevice, BusError, SharedDevice};

/// First port of configuration mechanism #1 (address register; data at +4).
pub const CONFIG_PORT: u64 = hw_devices::pci::CONFIG_ADDRESS as u64;
/// Ports the PCI host decodes: 0xCF8..0xD00.
pub const CONFIG_PORTS: u64 = 8;
/// The name the configuration ports are counted under in `stats.devices`.
pub const HOST_NAME: &str = "pci-host";
/// Device number of the host bridge.
pub const HOST_BRIDGE: PciAddr = PciAddr::new(0, 0);
/// Device number of the PIIX3 ISA bridge.
pub const ISA_BRIDGE: PciAddr = PciAddr::new(1, 0);
/// Where QEMU's `pc` machine puts the PIIX3 IDE function.
pub const IDE_FUNCTION: PciAddr = PciAddr::new(1, 1);
/// First device number [`PciBus::add`] picks when no slot is given (QEMU's first NIC
/// slot on `-M pc`, after the VGA at 00:02.0 that we leave out).
pub const FIRST_FREE_DEVICE: u8 = 3;
/// First GSI (IOAPIC pin) of PCI INTx.
pub const INTX_GSI_BASE: u32 = 16;
/// Number of GSIs PCI INTx is spread over.
pub const INTX_GSI_COUNT: u32 = 8;

/// I/O BAR window `[start, end)`.
pub const IO_WINDOW: (u64, u64) = (0xc000, 0x1_0000);
/// Window for memory BARs of up to [`SMALL_BAR_MAX`] bytes, below the IOAPIC.
pub const MEM_WINDOW_SMALL: (u64, u64) = (0xfeb0_0000, 0xfec0_0000);
/// Largest BAR placed in [`MEM_WINDOW_SMALL`].
pub const SMALL_BAR_MAX: u64 = 1 << 20;
/// Window for larger memory BARs (and smaller ones once the first is full).
pub const MEM_WINDOW_LARGE: (u64, u64) = (0xe000_0000, 0xfeb0_0000);

/// Keeps only the address register's defined bits: enable, bus, device, function and
/// dword register (bits 30..24 are reserved, 1..0 select a type-1 cycle, unused).
const ADDRESS_MASK: u32 = CONFIG_ENABLE | 0x00ff_fffc;

/// A function on bus 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddr {
    /// Device number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

impl PciAddr {
    /// `00:device.function`.
    pub const fn new(device: u8, function: u8) -> Self {
        Self { device, function }
    }

    fn valid(self) -> bool {
        self.device < 32 && self.function < 8
    }

    /// The value of 0xCF8 that selects `register` of this function.
    pub const fn config_address(self, register: u8) -> u32 {
        config_address(0, self.device, self.function, register)
    }
}

impl fmt::Display for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00:{:02x}.{}", self.device, self.function)
    }
}

/// The GSI (IOAPIC pin) that INTx `pin` (1 = INTA# .. 4 = INTD#) of device `device`
/// is routed to; `None` for pin 0 (no interrupt) or an invalid pin.
pub fn intx_gsi(device: u8, pin: u8) -> Option<u32> {
    (1..=4)
        .contains(&pin)
        .then(|| INTX_GSI_BASE + (u32::from(device) + u32::from(pin) - 1) % INTX_GSI_COUNT)
}

/// Errors when adding a function.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// Device or function number out of range.
    #[error("PCI address {0} is not on bus 0 (device < 32, function < 8)")]
    BadAddress(PciAddr),
    /// Another function is there.
    #[error("PCI address {addr} is taken by {other}")]
    Taken {
        /// The requested address.
        addr: PciAddr,
        /// The name of the function there.
        other: String,
    },
    /// Functions 1..8 of a device exist only with function 0.
    #[error("PCI function {0} needs function 0 of its device first")]
    NoFunctionZero(PciAddr),
    /// Every device number from [`FIRST_FREE_DEVICE`] is taken.
    #[error("no free PCI device number")]
    Full,
    /// Two functions with one name would share their counters.
    #[error("a PCI function named {0} is already on the bus")]
    DuplicateName(String),
    /// A BAR does not fit its window.
    #[error("{name}: no room for BAR {index} ({size:#x} bytes of {kind:?} space)")]
    NoRoom {
        /// The function's name.
        name: String,
        /// BAR index.
        index: usize,
        /// Its space.
        kind: BarKind,
        /// Its size.
        size: u64,
    },
    /// A fixed legacy range is taken or reserved.
    #[error("{name}: legacy range: {source}")]
    Legacy {
        /// The function's name.
        name: String,
        /// What is in the way.
        source: BusError,
    },
}

/// The PCI host's counters (`stats.devices.pci-host`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PciHostStats {
    /// Configuration reads through 0xCFC (enabled, bus 0).
    pub config_reads: u64,
    /// Configuration writes through 0xCFC (enabled, bus 0).
    pub config_writes: u64,
    /// Configuration accesses to absent functions or other buses.
    pub absent: u64,
    /// Accesses to 0xCF8..0xCFC that were not a 32-bit access to the address register.
    pub dropped: u64,
    /// BAR ranges put on a bus.
    pub bar_maps: u64,
    /// BAR ranges taken off a bus.
    pub bar_unmaps: u64,
    /// BARs left unmapped because their range was taken or reserved.
    pub bar_conflicts: u64,
    /// Doorbells KVM absorbs now (ioeventfds registered).
    pub doorbells: u64,
}

impl PciHostStats {
    fn idle(&self) -> bool {
        self.config_reads == 0
            && self.config_writes == 0
            && self.absent == 0
            && self.dropped == 0
            && self.bar_conflicts == 0
    }
}

/// A function as the bus reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Where it is.
    pub addr: PciAddr,
    /// Its name in the counters.
    pub name: String,
    /// Whether the bus created it (host and ISA bridges).
    pub builtin: bool,
    /// Its interrupt pin (0: none).
    pub pin: u8,
    /// The GSI that pin is routed to.
    pub gsi: Option<u32>,
    /// Its BARs on the buses now.
    pub mapped: Vec<MappedBar>,
}

/// Forwards accesses to one region of a PCI model: what the bus maps for a BAR or a
/// legacy range.
pub struct BarRegion {
    device: SharedPciDevice,
    region: usize,
}

impl BarRegion {
    /// Region `region` (a BAR index or a legacy region number) of `device`.
    pub fn new(device: SharedPciDevice, region: usize) -> Self {
        Self { device, region }
    }
}

impl BusDevice for BarRegion {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock_model(&self.device).region_read(self.region, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        lock_model(&self.device).region_write(self.region, offset, data);
        Action::Continue
    }
}

fn lock_model(device: &SharedPciDevice) -> MutexGuard<'_, dyn PciDevice + 'static> {
    // As for bus devices: a model poisoned by a panic elsewhere is still the best state.
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, Debug, Default)]
struct BarState {
    /// What is on the bus now.
    on_bus: Option<MappedBar>,
    /// What the header wants but could not be mapped (counted once).
    blocked: Option<MappedBar>,
}

struct Function {
    name: Arc<str>,
    device: SharedPciDevice,
    builtin: bool,
    bars: [BarState; BAR_COUNT],
}

/// Where the bus has doorbells ([`PciDevice::doorbells`]) absorbed: KVM's ioeventfds.
pub trait Doorbells: Send + Sync {
    /// Makes 1-, 2- or 4-byte writes to guest-physical `addr` signal `event`; false if
    /// that failed (the writes then keep exiting, and reach the device as before).
    fn register(&self, addr: u64, event: &vmm_sys_util::eventfd::EventFd) -> bool;
    /// Undoes [`Doorbells::register`].
    fn unregister(&self, addr: u64, event: &vmm_sys_util::eventfd::EventFd);
}

/// The state behind 0xCF8..0xD00: the address register and the functions.
pub struct PciHost {
    address: u32,
    doorbells: Option<Arc<dyn Doorbells>>,
    /// Weak: the port bus holds this host (its configuration ports), and a strong
    /// reference back would keep both, with every device and the guest memory they
    /// hold, alive after the machine is dropped (LeakSanitizer found the cycle).
    pio: Weak<Bus>,
    mmio: Arc<Bus>,
    functions: BTreeMap<PciAddr, Function>,
    reserved: Vec<(BarKind, u64, u64)>,
    next_io: u64,
    next_mem_small: u64,
    next_mem_large: u64,
    stats: PciHostStats,
}

/// PCI bus 0: a handle to the PCI host (cheap to clone, usable from any thread).
#[derive(Clone)]
pub struct PciBus {
    host: Arc<Mutex<PciHost>>,
}

impl PciBus {
    /// An empty bus whose BARs go onto `pio` and `mmio`; its configuration ports are
    /// put on `pio` at 0xCF8..0xD00. No functions, not even the host bridge: see
    /// [`PciBus::pc`].
    pub fn new(pio: Arc<Bus>, mmio: Arc<Bus>) -> Result<Self, BusError> {
        let host = Arc::new(Mutex::new(PciHost {
            address: 0,
            doorbells: None,
            pio: Arc::downgrade(&pio),
            mmio,
            functions: BTreeMap::new(),
            reserved: Vec::new(),
            next_io: IO_WINDOW.0,
            next_mem_small: MEM_WINDOW_SMALL.0,
            next_mem_large: MEM_WINDOW_LARGE.0,
            stats: PciHostStats::default(),
        }));
        let dev: SharedDevice = host.clone();
        pio.insert_named(CONFIG_PORT, CONFIG_PORTS, HOST_NAME, dev)?;
        Ok(Self { host })
    }

    /// The bus of QEMU's `pc` machine: [`PciBus::new`] with the i440FX host bridge at
    /// 00:00.0 and the PIIX3 ISA bridge at 00:01.0.
    pub fn pc(pio: Arc<Bus>, mmio: Arc<Bus>) -> Result<Self, PciError> {
        let bus = Self::new(pio, mmio).map_err(|source| PciError::Legacy {
            name: HOST_NAME.into(),
            source,
        })?;
        {
            let mut host = bus.lock();
            host.add(
                "i440fx",
                Arc::new(Mutex::new(HostBridge::new())),
                Some(HOST_BRIDGE),
                true,
            )?;
            host.add(
                "piix3-isa",
                Arc::new(Mutex::new(Piix3Isa::new())),
                Some(ISA_BRIDGE),
                true,
            )?;
        }
        Ok(bus)
    }

    fn lock(&self) -> MutexGuard<'_, PciHost> {
        self.host.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Has doorbells absorbed by `doorbells` from now on (the BARs mapped later, and
    /// those mapped already).
    pub fn set_doorbells(&self, doorbells: Arc<dyn Doorbells>) {
        let mut host = self.lock();
        host.doorbells = Some(doorbells);
        let mapped: Vec<(SharedPciDevice, MappedBar)> = host
            .functions
            .values()
            .flat_map(|f| {
                f.bars
                    .iter()
                    .filter_map(|s| s.on_bus)
                    .map(|b| (f.device.clone(), b))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (device, b) in mapped {
            host.ring_doorbells(&device, b, true);
        }
    }

    /// Marks `[base, base + len)` of `kind` space as taken by something that is not on
    /// the buses (guest RAM, the in-kernel IOAPIC and LAPIC): no BAR is mapped over it.
    pub fn reserve(&self, kind: BarKind, base: u64, len: u64) {
        self.lock().reserved.push((kind, base, len));
    }

    /// Adds `device` as `name` at `slot` (`None`: function 0 of the first free device
    /// number from [`FIRST_FREE_DEVICE`]), assigns its BARs as firmware would, enables
    /// decode and bus mastering, writes its interrupt line, and maps its legacy ranges
    /// and BARs. Returns where it is.
    pub fn add(
        &self,
        name: &str,
        device: SharedPciDevice,
        slot: Option<PciAddr>,
    ) -> Result<PciAddr, PciError> {
        self.lock().add(name, device, slot, false)
    }

    /// The address [`PciBus::add`] would pick without a slot.
    pub fn free_slot(&self) -> Option<PciAddr> {
        self.lock().free_slot()
    }

    /// The functions, in address order.
    pub fn functions(&self) -> Vec<FunctionInfo> {
        let host = self.lock();
        host.functions
            .iter()
            .map(|(&addr, f)| {
                let pin = lock_model(&f.device).config().interrupt_pin();
                FunctionInfo {
                    addr,
                    name: f.name.to_string(),
                    builtin: f.builtin,
                    pin,
                    gsi: intx_gsi(addr.device, pin),
                    mapped: f.bars.iter().filter_map(|b| b.on_bus).collect(),
                }
            })
            .collect()
    }

    /// The INTx routes in use, one per (device, pin): `(device, pin, gsi)`.
    pub fn intx_routes(&self) -> Vec<(u8, u8, u32)> {
        let mut routes: Vec<(u8, u8, u32)> = self
            .functions()
            .iter()
            .filter_map(|f| Some((f.addr.device, f.pin, f.gsi?)))
            .collect();
        routes.sort_unstable();
        routes.dedup();
        routes
    }

    /// The host's own counters.
    pub fn stats(&self) -> PciHostStats {
        self.lock().stats.clone()
    }

    /// The host's counters as JSON, or `None` if the guest never used the bus.
    pub fn stats_json(&self) -> Option<serde_json::Value> {
        let stats = self.stats();
        if stats.idle() {
            return None;
        }
        serde_json::to_value(stats).ok()
    }

    /// Each added (not built-in) function's name, address and `stats()`.
    pub fn device_stats(&self) -> Vec<(String, PciAddr, serde_json::Value)> {
        let host = self.lock();
        host.functions
            .iter()
            .filter(|(_, f)| !f.builtin)
            .map(|(&addr, f)| (f.name.to_string(), addr, lock_model(&f.device).stats()))
            .collect()
    }
}

impl PciHost {
    fn free_slot(&self) -> Option<PciAddr> {
        (FIRST_FREE_DEVICE..32)
            .map(|d| PciAddr::new(d, 0))
            .find(|a| !self.functions.contains_key(a))
    }

    fn add(
        &mut self,
        name: &str,
        device: SharedPciDevice,
        slot: Option<PciAddr>,
        builtin: bool,
    ) -> Result<PciAddr, PciError> {
        let addr = match slot {
            Some(a) => a,
            None => self.free_slot().ok_or(PciError::Full)?,
        };
        if !addr.valid() {
            return Err(PciError::BadAddress(addr));
        }
        if let Some(other) = self.functions.get(&addr) {
            return Err(PciError::Taken {
                addr,
                other: other.name.to_string(),
            });
        }
        if addr.function != 0 && !self.functions.contains_key(&PciAddr::new(addr.device, 0)) {
            return Err(PciError::NoFunctionZero(addr));
        }
        if self.functions.values().any(|f| &*f.name == name) {
            return Err(PciError::DuplicateName(name.into()));
        }
        let name: Arc<str> = name.into();
        let bars = self.assign_bars(&name, &device)?;
        self.map_legacy(&name, &device)?;
        // Commit the allocation only now that nothing can fail.
        for &(_, kind, base, size) in &bars {
            let next = match kind {
                BarKind::Io => &mut self.next_io,
                BarKind::Memory32 if base >= MEM_WINDOW_SMALL.0 => &mut self.next_mem_small,
                BarKind::Memory32 => &mut self.next_mem_large,
            };
            *next = (*next).max(base + size);
        }
        {
            let mut dev = lock_model(&device);
            for &(index, _, base, _) in &bars {
                dev.config_write(bar_offset(index), &(base as u32).to_le_bytes());
            }
            let mut cmd = dev.config().command() | command::BUS_MASTER;
            if bars.iter().any(|b| b.1 == BarKind::Io) {
                cmd |= command::IO_SPACE;
            }
            if bars.iter().any(|b| b.1 == BarKind::Memory32) {
                cmd |= command::MEMORY_SPACE;
            }
            dev.config_write(reg::COMMAND, &cmd.to_le_bytes());
            let pin = dev.config().interrupt_pin();
            if let Some(gsi) = intx_gsi(addr.device, pin) {
                dev.config_write(reg::INTERRUPT_LINE, &[gsi as u8]);
            }
        }
        self.functions.insert(
            addr,
            Function {
                name,
                device,
                builtin,
                bars: [BarState::default(); BAR_COUNT],
            },
        );
        self.sync_bars();
        Ok(addr)
    }

    /// Sizes the BARs the way firmware does and picks an address for each, without
    /// committing: `(index, kind, base, size)`.
    fn assign_bars(
        &self,
        name: &str,
        device: &SharedPciDevice,
    ) -> Result<Vec<(usize, BarKind, u64, u64)>, PciError> {
        let mut dev = lock_model(device);
        let (mut io, mut small, mut large) =
            (self.next_io, self.next_mem_small, self.next_mem_large);
        let mut out = Vec::new();
        let mut index = 0;
        while index < BAR_COUNT {
            let off = bar_offset(index);
            let old = dev.config().read32(off);
            dev.config_write(off, &[0xff; 4]);
            let probe = dev.config().read32(off);
            dev.config_write(off, &old.to_le_bytes());
            let this = index;
            index += 1;
            if probe == 0 {
                continue;
            }
            let (kind, mask) = if probe & bar::IO != 0 {
                (BarKind::Io, probe & bar::IO_ADDRESS_MASK & 0xffff)
            } else if probe & bar::MEM_TYPE_MASK == bar::MEM_TYPE_64 {
                // No model has one; a 64-bit BAR would also take the next slot.
                index += 1;
                continue;
            } else {
                (BarKind::Memory32, probe & bar::MEM_ADDRESS_MASK)
            };
            let size = u64::from(mask & mask.wrapping_neg());
            if size == 0 {
                continue;
            }
            let no_room = || PciError::NoRoom {
                name: name.into(),
                index: this,
                kind,
                size,
            };
            let base = match kind {
                BarKind::Io => take(&mut io, size, IO_WINDOW.1).ok_or_else(no_room)?,
                BarKind::Memory32 => (size <= SMALL_BAR_MAX)
                    .then(|| take(&mut small, size, MEM_WINDOW_SMALL.1))
                    .flatten()
                    .or_else(|| take(&mut large, size, MEM_WINDOW_LARGE.1))
                    .ok_or_else(no_room)?,
            };
            out.push((this, kind, base, size));
        }
        Ok(out)
    }

    /// Maps the device's fixed legacy ranges, all or none.
    fn map_legacy(&mut self, name: &Arc<str>, device: &SharedPciDevice) -> Result<(), PciError> {
        let ranges = lock_model(device).legacy_ranges();
        let mut done: Vec<(BarKind, u64)> = Vec::new();
        for (kind, base, len, region) in ranges {
            let result = if self.is_reserved(kind, base, len) {
                Err(BusError::Overlap {
                    base,
                    len,
                    other: base,
                })
            } else {
                let dev: SharedDevice =
                    Arc::new(Mutex::new(BarRegion::new(device.clone(), region)));
                self.bus(kind)
                    .and_then(|bus| bus.insert_named(base, len, name.clone(), dev))
            };
            if let Err(source) = result {
                for (kind, base) in done {
                    if let Ok(bus) = self.bus(kind) {
                        bus.remove(base);
                    }
                }
                return Err(PciError::Legacy {
                    name: name.to_string(),
                    source,
                });
            }
            done.push((kind, base));
        }
        Ok(())
    }

    fn bus(&self, kind: BarKind) -> Result<Arc<Bus>, BusError> {
        match kind {
            BarKind::Io => self.pio.upgrade().ok_or(BusError::Gone),
            BarKind::Memory32 => Ok(self.mmio.clone()),
        }
    }

    fn is_reserved(&self, kind: BarKind, base: u64, len: u64) -> bool {
        let end = base.saturating_add(len);
        self.reserved
            .iter()
            .any(|&(k, b, l)| k == kind && base < b.saturating_add(l) && b < end)
    }

    /// Registers (`on`) or unregisters the doorbells of `device`'s BAR `b`.
    fn ring_doorbells(&mut self, device: &SharedPciDevice, b: MappedBar, on: bool) {
        let Some(bells) = self.doorbells.clone() else {
            return;
        };
        if b.kind != BarKind::Memory32 {
            return;
        }
        let list = lock_model(device).doorbells(b.index);
        for (offset, event) in list {
            if offset >= b.size {
                continue;
            }
            if on {
                if bells.register(b.base + offset, &event) {
                    self.stats.doorbells += 1;
                }
            } else {
                bells.unregister(b.base + offset, &event);
                self.stats.doorbells = self.stats.doorbells.saturating_sub(1);
            }
        }
    }

    /// Brings every function's BARs on the buses in line with their headers: all stale
    /// ranges out first, then the wanted ones in, so that two BARs trading places in
    /// one step both land.
    fn sync_bars(&mut self) {
        let mut wanted: Vec<(PciAddr, [Option<MappedBar>; BAR_COUNT])> = Vec::new();
        // BARs whose doorbells move with them: off the old place, onto the new one.
        let mut off: Vec<(SharedPciDevice, MappedBar)> = Vec::new();
        let mut on: Vec<(SharedPciDevice, MappedBar)> = Vec::new();
        for (&addr, f) in self.functions.iter_mut() {
            let mut want = [None; BAR_COUNT];
            for b in lock_model(&f.device).config().mapped_bars() {
                if let Some(slot) = want.get_mut(b.index) {
                    *slot = Some(b);
                }
            }
            for (state, want) in f.bars.iter_mut().zip(want) {
                if let Some(old) = state.on_bus.filter(|&old| Some(old) != want) {
                    match old.kind {
                        BarKind::Io => self.pio.upgrade().and_then(|pio| pio.remove(old.base)),
                        BarKind::Memory32 => self.mmio.remove(old.base),
                    };
                    state.on_bus = None;
                    self.stats.bar_unmaps += 1;
                    off.push((f.device.clone(), old));
                }
                if state.blocked != want {
                    state.blocked = None;
                }
            }
            wanted.push((addr, want));
        }
        for (addr, want) in wanted {
            for (index, want) in want.into_iter().enumerate() {
                let Some(b) = want else { continue };
                let Some(f) = self.functions.get(&addr) else {
                    continue;
                };
                if f.bars[index].on_bus.is_some() {
                    continue;
                }
                let free = !self.is_reserved(b.kind, b.base, b.size) && {
                    let dev: SharedDevice =
                        Arc::new(Mutex::new(BarRegion::new(f.device.clone(), index)));
                    self.bus(b.kind)
                        .and_then(|bus| bus.insert_named(b.base, b.size, f.name.clone(), dev))
                        .is_ok()
                };
                let Some(f) = self.functions.get_mut(&addr) else {
                    continue;
                };
                let state = &mut f.bars[index];
                if free {
                    state.on_bus = Some(b);
                    state.blocked = None;
                    self.stats.bar_maps += 1;
                    on.push((f.device.clone(), b));
                } else if state.blocked != Some(b) {
                    state.blocked = Some(b);
                    self.stats.bar_conflicts += 1;
                }
            }
        }
        for (device, b) in off {
            self.ring_doorbells(&device, b, false);
        }
        for (device, b) in on {
            self.ring_doorbells(&device, b, true);
        }
    }

    /// The function and register 0xCF8 selects, if the access is a configuration cycle
    /// on bus 0.
    fn selected(&self) -> Option<(PciAddr, usize)> {
        let a = self.address;
        if a & CONFIG_ENABLE == 0 || (a >> 16) & 0xff != 0 {
            return None;
        }
        let addr = PciAddr::new((a >> 11 & 0x1f) as u8, (a >> 8 & 0x7) as u8);
        Some((addr, (a & 0xfc) as usize))
    }

    /// The function and register the address register selects, if one is there
    /// (counted as an access to an absent function otherwise).
    fn target(&mut self) -> Option<(PciAddr, usize, SharedPciDevice)> {
        let found = self.selected().and_then(|(addr, reg)| {
            let f = self.functions.get(&addr)?;
            Some((addr, reg, f.device.clone()))
        });
        if found.is_none() {
            self.stats.absent += 1;
        }
        found
    }

    fn data_read(&mut self, lane: usize, data: &mut [u8]) {
        data.fill(0xff);
        let n = data.len().min(4usize.saturating_sub(lane));
        let Some((addr, reg, device)) = self.target() else {
            return;
        };
        self.stats.config_reads += 1;
        let off = reg + lane;
        lock_model(&device).config_read(off, &mut data[..n]);
        // Function 0 of a device with more functions says so, whatever its model set,
        // or the guest would not probe the others.
        let multi = addr.function == 0
            && self
                .functions
                .range(PciAddr::new(addr.device, 1)..=PciAddr::new(addr.device, 7))
                .next()
                .is_some();
        if multi && (off..off + n).contains(&reg::HEADER_TYPE) {
            data[reg::HEADER_TYPE - off] |= 0x80;
        }
    }

    fn data_write(&mut self, lane: usize, data: &[u8]) {
        let n = data.len().min(4usize.saturating_sub(lane));
        let Some((_, reg, device)) = self.target() else {
            return;
        };
        self.stats.config_writes += 1;
        lock_model(&device).config_write(reg + lane, &data[..n]);
        self.sync_bars();
    }
}

/// Takes `size` bytes aligned to `size` from the bump pointer `next`, below `limit`.
fn take(next: &mut u64, size: u64, limit: u64) -> Option<u64> {
    let base = next.checked_next_multiple_of(size)?;
    let end = base.checked_add(size).filter(|&e| e <= limit)?;
    *next = end;
    Some(base)
}

impl BusDevice for PciHost {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => self.data_read(offset as usize - 4, data),
            _ => {
                self.stats.dropped += 1;
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        match offset {
            0 if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b) & ADDRESS_MASK;
            }
            4..=7 => self.data_write(offset as usize - 4, data),
            _ => self.stats.dropped += 1,
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swizzle_spreads_pins_over_eight_gsis() {
        assert_eq!(intx_gsi(3, 1), Some(19));
        assert_eq!(intx_gsi(3, 4), Some(22));
        assert_eq!(intx_gsi(5, 4), Some(16));
        assert_eq!(intx_gsi(0, 1), Some(16));
        assert_eq!(intx_gsi(31, 2), Some(16));
        assert_eq!(intx_gsi(3, 0), None);
        assert_eq!(intx_gsi(3, 5), None);
    }

    #[test]
    fn bump_allocation_aligns_and_respects_the_limit() {
        let mut next = 0xc004;
        assert_eq!(take(&mut next, 0x40, 0x1_0000), Some(0xc040));
        assert_eq!(next, 0xc080);
        assert_eq!(take(&mut next, 0x1_0000, 0x1_0000), None);
        assert_eq!(next, 0xc080, "a failed take leaves the pointer");
        let mut next = u64::MAX - 3;
        assert_eq!(take(&mut next, 16, u64::MAX), None);
    }

    #[test]
    fn address_display_is_bdf() {
        assert_eq!(PciAddr::new(3, 0).to_string(), "00:03.0");
        assert_eq!(PciAddr::new(0x1f, 7).to_string(), "00:1f.7");
        assert_eq!(IDE_FUNCTION.config_address(0x3c), 0x8000_093c);
    }
}
