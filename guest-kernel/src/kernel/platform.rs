//! The platform under the emulated devices' drivers: the `hw_devices` access traits
//! over this kernel ([`GuestPorts`]: `in`/`out`; [`MmioRegion`]: a memory BAR mapped
//! uncached; [`GuestDma`]: zeroed frames from the frame allocator), the PCI scan at
//! boot (configuration mechanism #1) and the IOAPIC, and the preparation of each kind
//! of emulated device for its driver ([`prepare_ide`], [`prepare_e1000`],
//! [`prepare_virtio`]): found on PCI, decode and bus mastering on, its interrupt routed
//! to a [`DeviceEvent`] (an IOAPIC line, or for a virtio device an MSI-X message on a
//! vector of its own, [`VirtioIrq`]). [`GuestVirtioHal`] is `virtio-drivers`' DMA for
//! the virtio drivers.
//!
//! Where there is no PCI (QEMU microvm, Xen PVH) the scan finds nothing after one
//! configuration read, and every `prepare_*` says so.

use alloc::string::String;
use alloc::vec::Vec;

use guest_kernel::ioopts::AtaMode;
use hw_devices::pci::{self, Bar, BarKind, ConfigAccess as _, Function, Mechanism1, class};
use hw_devices::virtio::{self, transport::PciTransport, virtio_drivers};
use hw_devices::{DmaMemory, Mmio, PortIo};
use pv_drivers::shmem::RawSharedMemory;
use spin::Once;

use super::event::DeviceEvent;
use super::ioapic::{self, Polarity, Trigger};
use super::{arch, interrupts, memory};
use crate::kprintln;

/// Port I/O by the `in`/`out` instructions.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestPorts;

impl PortIo for GuestPorts {
    fn read8(&mut self, port: u16) -> u8 {
        arch::inb(port)
    }
    fn read16(&mut self, port: u16) -> u16 {
        arch::inw(port)
    }
    fn read32(&mut self, port: u16) -> u32 {
        arch::inl(port)
    }
    fn write8(&mut self, port: u16, value: u8) {
        arch::outb(port, value)
    }
    fn write16(&mut self, port: u16, value: u16) {
        arch::outw(port, value)
    }
    fn write32(&mut self, port: u16, value: u32) {
        arch::outl(port, value)
    }
}

/// A memory BAR's registers, mapped uncached. Accesses outside the BAR or misaligned
/// are a driver bug; they read all ones and write nothing rather than reach memory
/// beyond the window.
#[derive(Debug)]
pub struct MmioRegion {
    base: u64,
    len: u64,
}

impl MmioRegion {
    /// Maps memory BAR `bar`.
    pub fn map(bar: &Bar) -> Result<Self, String> {
        if !bar.is_memory() {
            return Err(alloc::format!("{bar} is not a memory BAR"));
        }
        let base =
            memory::map_mmio(bar.address, bar.size).map_err(|e| alloc::format!("{bar}: {e}"))?;
        Ok(Self {
            base,
            len: bar.size,
        })
    }

    /// The address of the `width`-byte register at `offset`, if it is naturally
    /// aligned and inside the BAR.
    fn at(&self, offset: u32, width: u32) -> Option<u64> {
        (offset.is_multiple_of(width) && u64::from(offset) + u64::from(width) <= self.len)
            .then(|| self.base + u64::from(offset))
    }
}

impl Mmio for MmioRegion {
    fn read32(&mut self, offset: u32) -> u32 {
        match self.at(offset, 4) {
            // SAFETY: `at` keeps the access inside the BAR, which `map` found in the
            // uncached identity-mapped MMIO window, and aligned; device registers, not
            // memory.
            Some(a) => unsafe { core::ptr::read_volatile(a as *const u32) },
            None => u32::MAX,
        }
    }

    fn write32(&mut self, offset: u32, value: u32) {
        if let Some(a) = self.at(offset, 4) {
            // SAFETY: as in `read32`.
            unsafe { core::ptr::write_volatile(a as *mut u32, value) }
        }
    }

    fn read16(&mut self, offset: u32) -> u16 {
        match self.at(offset, 2) {
            // SAFETY: as in `read32`, one 16-bit access.
            Some(a) => unsafe { core::ptr::read_volatile(a as *const u16) },
            None => u16::MAX,
        }
    }

    fn write16(&mut self, offset: u32, value: u16) {
        if let Some(a) = self.at(offset, 2) {
            // SAFETY: as in `read32`, one 16-bit access.
            unsafe { core::ptr::write_volatile(a as *mut u16, value) }
        }
    }

    fn read8(&mut self, offset: u32) -> u8 {
        match self.at(offset, 1) {
            // SAFETY: as in `read32`, one byte access.
            Some(a) => unsafe { core::ptr::read_volatile(a as *const u8) },
            None => u8::MAX,
        }
    }

    fn write8(&mut self, offset: u32, value: u8) {
        if let Some(a) = self.at(offset, 1) {
            // SAFETY: as in `read32`, one byte access.
            unsafe { core::ptr::write_volatile(a as *mut u8, value) }
        }
    }
}

/// DMA memory from the frame allocator (`memory::alloc_zeroed`, shared with the PV
/// frontends): physical = virtual, below 4 GiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestDma;

impl DmaMemory for GuestDma {
    type Pages = RawSharedMemory;

    fn alloc_pages(&mut self, count: usize) -> Option<(u64, RawSharedMemory)> {
        memory::alloc_zeroed(count)
    }

    fn free_pages(&mut self, paddr: u64, pages: RawSharedMemory) {
        memory::free_zeroed(paddr, pages)
    }
}

/// `virtio-drivers`' DMA for the virtio drivers: the same frames as [`GuestDma`]
/// (identity mapped, so a buffer's address is its device address and sharing is the
/// identity: the heap and the stacks are identity-mapped RAM too).
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestVirtioHal;

// SAFETY: `dma_alloc` hands out zeroed, page-aligned frames that nothing else uses until
// `dma_dealloc`; every pointer is its physical address (identity map), valid RAM.
unsafe impl virtio_drivers::Hal for GuestVirtioHal {
    fn dma_alloc(
        pages: usize,
        _direction: virtio_drivers::BufferDirection,
    ) -> (virtio_drivers::PhysAddr, core::ptr::NonNull<u8>) {
        match memory::alloc_zeroed(pages) {
            // The view is rebuilt in `dma_dealloc`; the frames stay allocated.
            Some((paddr, _view)) => match core::ptr::NonNull::new(paddr as *mut u8) {
                Some(p) => (paddr, p),
                None => (0, core::ptr::NonNull::dangling()),
            },
            // virtio-drivers reads address 0 as failure.
            None => (0, core::ptr::NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(
        paddr: virtio_drivers::PhysAddr,
        vaddr: core::ptr::NonNull<u8>,
        pages: usize,
    ) -> i32 {
        // SAFETY: the caller passes what `dma_alloc` returned: `pages` frames at
        // `vaddr` (= `paddr`) that nothing uses any more.
        let view = unsafe { RawSharedMemory::new(vaddr.as_ptr(), pages * hw_devices::PAGE_SIZE) };
        memory::free_zeroed(paddr, view);
        0
    }

    unsafe fn mmio_phys_to_virt(
        paddr: virtio_drivers::PhysAddr,
        size: usize,
    ) -> core::ptr::NonNull<u8> {
        // Only virtio-drivers' own PCI transport calls this, which this kernel does not
        // use (`hw_devices::virtio::transport` maps BARs with `MmioRegion`).
        match memory::map_mmio(paddr, size as u64) {
            Ok(a) => core::ptr::NonNull::new(a as *mut u8)
                .unwrap_or_else(|| panic!("virtio: MMIO at address 0")),
            Err(e) => panic!("virtio: MMIO {paddr:#x}+{size:#x}: {e}"),
        }
    }

    unsafe fn share(
        buffer: core::ptr::NonNull<[u8]>,
        _direction: virtio_drivers::BufferDirection,
    ) -> virtio_drivers::PhysAddr {
        buffer.as_ptr().cast::<u8>() as u64
    }

    unsafe fn unshare(
        _paddr: virtio_drivers::PhysAddr,
        _buffer: core::ptr::NonNull<[u8]>,
        _direction: virtio_drivers::BufferDirection,
    ) {
    }
}

// SAFETY: DMA memory is identity mapped: its physical address is its pointer.
unsafe impl hw_devices::virtio::VirtioHal for GuestVirtioHal {
    fn dma_ptr(paddr: virtio_drivers::PhysAddr, _len: usize) -> Option<core::ptr::NonNull<u8>> {
        core::ptr::NonNull::new(paddr as *mut u8)
    }
}

/// Configuration space by mechanism #1.
pub fn config() -> Mechanism1<GuestPorts> {
    Mechanism1::new(GuestPorts)
}

static PCI: Once<Vec<Function>> = Once::new();

/// The functions the boot scan found (none before [`init`]).
pub fn functions() -> &'static [Function] {
    PCI.get().map_or(&[], Vec::as_slice)
}

/// Whether a PCI host bridge answered.
pub fn has_host_bridge() -> bool {
    functions()
        .iter()
        .any(|f| f.is(class::BRIDGE, class::BRIDGE_HOST))
}

/// Scans PCI bus 0 and probes the IOAPIC; prints what it found.
///
/// The IOAPIC is probed without Xen (any PC-like VMM) and under Xen only with a PCI
/// host bridge (QEMU's Xen emulation on `-M pc`, host-shim with emulated devices): a
/// Xen PVH guest has no emulated devices and no IOAPIC to look for.
pub fn init(xen: bool) {
    let found = PCI.call_once(|| pci::scan_bus0(&mut config()));
    if has_host_bridge() {
        for f in found {
            kprintln!("pci: {f}");
        }
    } else {
        kprintln!("pci: no host bridge");
    }
    if xen && !has_host_bridge() {
        return;
    }
    match ioapic::init() {
        Some(a) => kprintln!(
            "ioapic: id {} version {:#x}, {} pins, all masked",
            a.id,
            a.version,
            a.pins
        ),
        None => kprintln!("ioapic: none"),
    }
}

/// An ATA drive on the PCI IDE controller, ready for its driver.
pub struct IdeTarget {
    /// The controller (PIIX3/4 IDE, class 01.01).
    pub controller: Function,
    /// 0 primary master, 1 primary slave, 2 secondary master, 3 secondary slave.
    pub drive: u8,
    /// The channel's command block (0x1F0 or 0x170: data, error/features, count, LBA,
    /// device, status/command).
    pub command_base: u16,
    /// The channel's control block (0x3F6 or 0x376: alternate status/device control).
    pub control_port: u16,
    /// The channel's bus-master registers (BAR4 + 8 per channel), if the controller
    /// has them (always for [`AtaMode::Dma`]).
    pub bus_master: Option<u16>,
    /// Its ISA IRQ (14 or 15), routed edge-triggered to `event`.
    pub gsi: u8,
    /// DMA or PIO (`blk.ata=`).
    pub mode: AtaMode,
    /// Port I/O for the driver.
    pub ports: GuestPorts,
    /// Memory for the PRD table and the data buffers.
    pub dma: GuestDma,
    /// Set by the channel's interrupt.
    pub event: DeviceEvent,
}

/// An Intel e1000 (82540EM family) ready for its driver.
pub struct E1000Target {
    pub function: Function,
    /// BAR0's register file, mapped.
    pub mmio: MmioRegion,
    /// Its PCI INTx line, level-triggered, routed to `event` (`None`: not routed, the
    /// driver is polled at the recovery tick only).
    pub gsi: Option<u8>,
    /// Memory for the rings and buffers.
    pub dma: GuestDma,
    /// Set by the NIC's interrupt; the serve loop calls `rearm` after each poll.
    pub event: DeviceEvent,
}

/// Device IDs of the 8254x parts that QEMU models as `e1000` (82540EM), `e1000-82544gc`
/// and `e1000-82545em`; all share the register set the driver uses.
pub const E1000_DEVICE_IDS: [u16; 3] = [0x100e, 0x100c, 0x100f];

/// Whether `f` is an e1000.
pub fn is_e1000(f: &Function) -> bool {
    f.vendor == pci::VENDOR_INTEL && E1000_DEVICE_IDS.contains(&f.device)
}

/// The PCI IDE controller, if any.
pub fn ide_controller() -> Option<&'static Function> {
    functions()
        .iter()
        .find(|f| f.is(class::STORAGE, class::STORAGE_IDE))
}

/// Routes `gsi` to `event`, or says why not (the device is then only polled).
fn route(what: &str, gsi: u8, trigger: Trigger, polarity: Polarity, event: &DeviceEvent) -> bool {
    match interrupts::route_gsi(gsi, trigger, polarity, event) {
        Ok(vector) => {
            log::info!(
                "{what}: GSI {gsi} ({trigger:?}, active {polarity:?}) on vector {vector:#x}"
            );
            true
        }
        Err(e) => {
            log::warn!("{what}: GSI {gsi} not routed ({e}): polled at the recovery tick only");
            false
        }
    }
}

/// Finds the IDE controller for ATA drive `drive` (0..=3), turns on its I/O decode and
/// bus mastering and routes the channel's IRQ. Compatibility mode only (the legacy
/// ports and ISA IRQs, as PIIX3 and host-shim's model have it).
pub fn prepare_ide(drive: u8, mode: AtaMode) -> Result<IdeTarget, String> {
    let controller = ide_controller().ok_or("no PCI IDE controller")?.clone();
    if drive > 3 {
        return Err(alloc::format!("no ATA drive {drive} (0 to 3)"));
    }
    let secondary = drive >= 2;
    // Programming interface bit 0 (primary) / 2 (secondary): the channel is in native
    // mode (BARs and the PCI interrupt), which this kernel does not drive.
    if controller.prog_if & if secondary { 4 } else { 1 } != 0 {
        return Err(alloc::format!(
            "{}: channel in native-PCI mode (prog-if {:#x})",
            controller.bdf,
            controller.prog_if
        ));
    }
    let (command_base, control_port, gsi) = if secondary {
        (0x170, 0x376, 15)
    } else {
        (0x1f0, 0x3f6, 14)
    };
    let bus_master = match controller.bars[4] {
        Some(b) if b.kind == BarKind::Io => {
            // The 16-byte block holds the primary's registers, then the secondary's.
            u16::try_from(b.address + if secondary { 8 } else { 0 }).ok()
        }
        _ => None,
    };
    if mode == AtaMode::Dma && bus_master.is_none() {
        return Err(alloc::format!(
            "{}: no bus-master I/O BAR for DMA (blk.ata=pio works without)",
            controller.bdf
        ));
    }
    let cmd = pci::enable_io_and_dma(&mut config(), controller.bdf);
    log::info!("ide: {} command {cmd:#06x}", controller.bdf);
    let event = DeviceEvent::default();
    route("ide", gsi, Trigger::Edge, Polarity::High, &event);
    Ok(IdeTarget {
        controller,
        drive,
        command_base,
        control_port,
        bus_master,
        gsi,
        mode,
        ports: GuestPorts,
        dma: GuestDma,
        event,
    })
}

/// How a virtio device interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioIrq {
    /// MSI-X: one vector shared by its queues (its handler sets the event; no ISR read).
    Msix(u8),
    /// Its PCI INTx line (this GSI), level-triggered (the driver reads ISR per poll).
    Intx(u8),
    /// Not routed: the driver is polled at the recovery tick only.
    None,
}

impl core::fmt::Display for VirtioIrq {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Msix(v) => write!(f, "MSI-X vector {v:#x}"),
            Self::Intx(g) => write!(f, "INTx GSI {g}"),
            Self::None => f.write_str("none"),
        }
    }
}

/// A virtio device on the modern PCI transport, ready for its driver.
pub struct VirtioTarget {
    pub function: Function,
    /// Its structures found and their BARs mapped.
    pub transport: PciTransport<MmioRegion>,
    /// How its interrupt reaches `event`.
    pub irq: VirtioIrq,
    /// Set by the device's interrupt; the caller calls `rearm` after each poll.
    pub event: DeviceEvent,
}

/// The virtio functions of device type `kind` found, in scan order (modern IDs, and
/// transitional ones, whose type is their subsystem ID).
pub fn virtio_devices(kind: u16) -> impl Iterator<Item = &'static Function> {
    functions().iter().filter(move |f| {
        let subsystem = if (virtio::TRANSITIONAL_FIRST..=virtio::TRANSITIONAL_LAST)
            .contains(&f.device)
            && f.vendor == virtio::VENDOR
        {
            config().read16(f.bdf, pci::reg::SUBSYSTEM_ID as u8)
        } else {
            0
        };
        virtio::device_type_of(f.vendor, f.device, subsystem) == Some(kind)
    })
}

fn virtio_name(kind: u16) -> &'static str {
    match kind {
        virtio::device_type::BLOCK => "virtio-blk",
        _ => "virtio-net",
    }
}

/// Routes the INTx line of virtio function `function` to `event`.
fn route_virtio_intx(name: &str, function: &Function, event: &DeviceEvent) -> VirtioIrq {
    let Some(gsi) = function.irq() else {
        log::warn!(
            "{name}: {}: no interrupt line: polled at the recovery tick only",
            function.bdf
        );
        return VirtioIrq::None;
    };
    if route(name, gsi, Trigger::Level, Polarity::pci(gsi), event) {
        VirtioIrq::Intx(gsi)
    } else {
        VirtioIrq::None
    }
}

/// Turns MSI-X on for `transport` with a vector of its own that sets `event`, or says
/// why not.
fn enable_virtio_msix(
    function: &Function,
    transport: &PciTransport<MmioRegion>,
    event: &DeviceEvent,
) -> Result<u8, String> {
    transport
        .msix_available()
        .map_err(|e| alloc::format!("{e}"))?;
    let msi = interrupts::route_msi(event).map_err(|e| alloc::format!("{e}"))?;
    transport
        .enable_msix(&mut config(), function.bdf, msi.address, msi.data)
        .map_err(|e| alloc::format!("{e}"))?;
    Ok(msi.vector)
}

/// Finds the `n`th virtio device of type `kind`, turns on memory decode and bus
/// mastering, finds its virtio structures (a legacy-only transitional device has
/// none: refused) and maps their BARs. Its interrupt: with `msix` and a usable MSI-X
/// capability, a message on a vector of its own (one shared by its queues; INTx stays
/// off); otherwise, or if that fails, its INTx line. Once the driver has set the queues
/// up, call [`settle_virtio_irq`]: the device may have refused a queue's vector.
pub fn prepare_virtio(kind: u16, n: u8, msix: bool) -> Result<VirtioTarget, String> {
    let name = virtio_name(kind);
    let function = virtio_devices(kind)
        .nth(usize::from(n))
        .ok_or_else(|| {
            alloc::format!(
                "no {name} number {n} (found {})",
                virtio_devices(kind).count()
            )
        })?
        .clone();
    let cmd = pci::enable_memory_and_dma(&mut config(), function.bdf);
    log::info!("{name}: {} command {cmd:#06x}", function.bdf);
    let mut map_error = String::new();
    let transport = PciTransport::probe(&mut config(), &function, |slot, bar| {
        MmioRegion::map(bar)
            .map_err(|e| map_error = alloc::format!("BAR {slot}: {e}"))
            .ok()
    })
    .map_err(|e| alloc::format!("{}: {e} {map_error}", function.bdf))?;
    let event = DeviceEvent::default();
    let irq = if !msix {
        log::info!("{name}: {}: MSI-X off (virtio.msix=off)", function.bdf);
        route_virtio_intx(name, &function, &event)
    } else {
        match enable_virtio_msix(&function, &transport, &event) {
            Ok(vector) => {
                log::info!("{name}: {}: MSI-X on vector {vector:#x}", function.bdf);
                VirtioIrq::Msix(vector)
            }
            Err(e) => {
                log::warn!("{name}: {}: MSI-X not used ({e}): INTx", function.bdf);
                route_virtio_intx(name, &function, &event)
            }
        }
    };
    Ok(VirtioTarget {
        function,
        transport,
        irq,
        event,
    })
}

/// After the driver set the queues up: if MSI-X is on but the device answered
/// `NO_VECTOR` for a queue (it could not allocate the vector; that queue would never
/// interrupt), turns MSI-X off and routes INTx instead. Returns how the device
/// interrupts now.
pub fn settle_virtio_irq(
    kind: u16,
    function: &Function,
    transport: &PciTransport<MmioRegion>,
    irq: VirtioIrq,
    event: &DeviceEvent,
) -> VirtioIrq {
    if !matches!(irq, VirtioIrq::Msix(_)) || !transport.msix_refused() {
        return irq;
    }
    let name = virtio_name(kind);
    log::warn!(
        "{name}: {}: the device refused the queue vector: MSI-X off, INTx",
        function.bdf
    );
    transport.disable_msix(&mut config(), function.bdf);
    // Whatever the device signalled meanwhile is found by the first poll.
    event.state().set();
    route_virtio_intx(name, function, event)
}

/// The e1000s found, in scan order.
pub fn e1000s() -> impl Iterator<Item = &'static Function> {
    functions().iter().filter(|f| is_e1000(f))
}

/// Finds the `n`th e1000, maps its BAR0, turns on memory decode and bus mastering, and
/// routes its INTx line (the interrupt line register: the GSI, as firmware or host-shim
/// programmed it).
pub fn prepare_e1000(n: u8) -> Result<E1000Target, String> {
    let function = e1000s()
        .nth(usize::from(n))
        .ok_or_else(|| alloc::format!("no e1000 number {n} (found {})", e1000s().count()))?
        .clone();
    let bar = function.bars[0]
        .filter(Bar::is_memory)
        .ok_or_else(|| alloc::format!("{}: BAR0 is not a memory BAR", function.bdf))?;
    let mmio = MmioRegion::map(&bar)?;
    let cmd = pci::enable_memory_and_dma(&mut config(), function.bdf);
    log::info!("e1000: {} command {cmd:#06x}", function.bdf);
    let event = DeviceEvent::default();
    let gsi = function
        .irq()
        .filter(|&gsi| route("e1000", gsi, Trigger::Level, Polarity::pci(gsi), &event));
    if function.irq().is_none() {
        log::warn!(
            "e1000: {}: no interrupt line: polled at the recovery tick only",
            function.bdf
        );
    }
    Ok(E1000Target {
        function,
        mmio,
        gsi,
        dma: GuestDma,
        event,
    })
}
