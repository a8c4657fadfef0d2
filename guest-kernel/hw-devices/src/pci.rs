//! PCI configuration space (PCI Local Bus Specification 3.0, chapter 6: the type-0
//! header) and configuration mechanism #1 (ports 0xCF8/0xCFC).
//!
//! The offsets and bits here are shared by the shim's PCI bus and device models and by
//! the guest's enumeration, which is here too: [`ConfigAccess`] (mechanism #1 over
//! [`crate::PortIo`] in [`Mechanism1`]), [`scan_bus0`] (every function of bus 0, BARs
//! decoded and sized as PCI 3.0 section 6.2.5.1 says) and the command-register helpers.
//!
//! The functions answering are hostile like any device: absent-function values, BAR
//! masks of zero, all ones or with holes, 64-bit BARs in the last slot, ranges that wrap,
//! a multi-function bit that lies: none makes the scan panic or report an unusable BAR.

/// Configuration address port (mechanism #1): a 32-bit write selects
/// `enable | bus | device | function | register`.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// Configuration data port: 4 bytes at 0xCFC..0xD00; byte `n` is register offset `+ n`.
pub const CONFIG_DATA: u16 = 0xcfc;
/// Bit 31 of [`CONFIG_ADDRESS`]: the access is a configuration cycle.
pub const CONFIG_ENABLE: u32 = 1 << 31;

/// Size of a function's configuration space (conventional PCI).
pub const CONFIG_SPACE_SIZE: usize = 256;

/// The value of [`CONFIG_ADDRESS`] that selects `register` (dword aligned) of
/// `bus:device.function`.
pub const fn config_address(bus: u8, device: u8, function: u8, register: u8) -> u32 {
    CONFIG_ENABLE
        | (bus as u32) << 16
        | ((device as u32) & 0x1f) << 11
        | ((function as u32) & 0x7) << 8
        | (register as u32 & 0xfc)
}

/// Offsets in the type-0 header.
pub mod reg {
    /// Vendor ID (16 bits; 0xFFFF: no function here).
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: usize = 0x02;
    /// Command (16 bits), see [`super::command`].
    pub const COMMAND: usize = 0x04;
    /// Status (16 bits), see [`super::status`].
    pub const STATUS: usize = 0x06;
    /// Revision ID (8 bits).
    pub const REVISION: usize = 0x08;
    /// Programming interface (8 bits).
    pub const PROG_IF: usize = 0x09;
    /// Subclass (8 bits).
    pub const SUBCLASS: usize = 0x0a;
    /// Class code (8 bits).
    pub const CLASS: usize = 0x0b;
    /// Cache line size (8 bits).
    pub const CACHE_LINE_SIZE: usize = 0x0c;
    /// Latency timer (8 bits).
    pub const LATENCY_TIMER: usize = 0x0d;
    /// Header type (8 bits; bit 7: multi-function).
    pub const HEADER_TYPE: usize = 0x0e;
    /// Base address register 0 (32 bits each, six of them).
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID (16 bits).
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID (16 bits).
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Expansion ROM base address (32 bits).
    pub const ROM_ADDRESS: usize = 0x30;
    /// Capabilities pointer (8 bits).
    pub const CAPABILITIES: usize = 0x34;
    /// Interrupt line (8 bits, read-write: what the firmware or OS routed the pin to).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (8 bits, read-only: 0 none, 1 INTA# .. 4 INTD#).
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Number of BARs in a type-0 header.
pub const BAR_COUNT: usize = 6;

/// Offset of BAR `index` (0..6).
pub const fn bar_offset(index: usize) -> usize {
    reg::BAR0 + 4 * index
}

/// Command register bits.
pub mod command {
    /// Respond to I/O space accesses.
    pub const IO_SPACE: u16 = 1 << 0;
    /// Respond to memory space accesses.
    pub const MEMORY_SPACE: u16 = 1 << 1;
    /// May act as a bus master (DMA).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// INTx# emulation disabled.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bits.
pub mod status {
    /// INTx# is asserted by the function (read-only).
    pub const INTERRUPT: u16 = 1 << 3;
    /// A capabilities list is present at [`super::reg::CAPABILITIES`].
    pub const CAPABILITIES_LIST: u16 = 1 << 4;
}

/// BAR bits.
pub mod bar {
    /// Bit 0: an I/O space BAR.
    pub const IO: u32 = 1;
    /// Address bits of an I/O BAR.
    pub const IO_ADDRESS_MASK: u32 = !0x3;
    /// Address bits of a memory BAR.
    pub const MEM_ADDRESS_MASK: u32 = !0xf;
    /// Memory BAR type field (bits 1-2): 0 = 32-bit, 2 = 64-bit.
    pub const MEM_TYPE_MASK: u32 = 0x6;
    /// Memory BAR type: 64-bit (takes two BAR slots).
    pub const MEM_TYPE_64: u32 = 0x4;
    /// Memory BAR: prefetchable.
    pub const MEM_PREFETCH: u32 = 0x8;
}

/// Class codes used here.
pub mod class {
    /// Mass storage controller.
    pub const STORAGE: u8 = 0x01;
    /// Mass storage: IDE controller.
    pub const STORAGE_IDE: u8 = 0x01;
    /// Network controller.
    pub const NETWORK: u8 = 0x02;
    /// Network: Ethernet.
    pub const NETWORK_ETHERNET: u8 = 0x00;
    /// Bridge device.
    pub const BRIDGE: u8 = 0x06;
    /// Bridge: host bridge.
    pub const BRIDGE_HOST: u8 = 0x00;
    /// Bridge: PCI-to-ISA bridge.
    pub const BRIDGE_ISA: u8 = 0x01;
}

/// Vendor ID of Intel.
pub const VENDOR_INTEL: u16 = 0x8086;

/// Address of a function: bus, device (0..32), function (0..8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

impl Bdf {
    /// `bus:device.function`.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Self {
            bus,
            device,
            function,
        }
    }
}

impl core::fmt::Display for Bdf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// Access to configuration space. `offset` is a byte offset in the 256-byte space;
/// 32-bit accesses are dword aligned, 16-bit ones word aligned (the callers here only
/// make such accesses).
pub trait ConfigAccess {
    /// Reads the dword at `offset & !3`.
    fn read32(&mut self, bdf: Bdf, offset: u8) -> u32;
    /// Writes the dword at `offset & !3`.
    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32);
    /// Writes the word at `offset & !1`. A word write of its own (not a read-modify-
    /// write of the dword) because Command shares its dword with Status, whose error
    /// bits are write-one-to-clear.
    fn write16(&mut self, bdf: Bdf, offset: u8, value: u16);

    /// Reads the word at `offset & !1`.
    fn read16(&mut self, bdf: Bdf, offset: u8) -> u16 {
        (self.read32(bdf, offset) >> (8 * (offset & 2))) as u16
    }

    /// Reads the byte at `offset`.
    fn read8(&mut self, bdf: Bdf, offset: u8) -> u8 {
        (self.read32(bdf, offset) >> (8 * (offset & 3))) as u8
    }
}

/// Configuration mechanism #1 over port I/O: a dword write of [`config_address`] to
/// [`CONFIG_ADDRESS`], then the data at [`CONFIG_DATA`] `+ (offset & 3)`.
pub struct Mechanism1<P> {
    io: P,
}

impl<P: crate::PortIo> Mechanism1<P> {
    /// Configuration space through `io`.
    pub fn new(io: P) -> Self {
        Self { io }
    }

    /// The port access underneath.
    pub fn into_inner(self) -> P {
        self.io
    }

    fn select(&mut self, bdf: Bdf, offset: u8) {
        self.io.write32(
            CONFIG_ADDRESS,
            config_address(bdf.bus, bdf.device, bdf.function, offset),
        );
    }
}

impl<P: crate::PortIo> ConfigAccess for Mechanism1<P> {
    fn read32(&mut self, bdf: Bdf, offset: u8) -> u32 {
        self.select(bdf, offset);
        self.io.read32(CONFIG_DATA)
    }

    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        self.select(bdf, offset);
        self.io.write32(CONFIG_DATA, value);
    }

    fn write16(&mut self, bdf: Bdf, offset: u8, value: u16) {
        self.select(bdf, offset);
        self.io.write16(CONFIG_DATA + u16::from(offset & 2), value);
    }

    fn read16(&mut self, bdf: Bdf, offset: u8) -> u16 {
        self.select(bdf, offset);
        self.io.read16(CONFIG_DATA + u16::from(offset & 2))
    }

    fn read8(&mut self, bdf: Bdf, offset: u8) -> u8 {
        self.select(bdf, offset);
        self.io.read8(CONFIG_DATA + u16::from(offset & 3))
    }
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// Memory below 4 GiB (a 32-bit BAR).
    Mem32,
    /// Memory anywhere (a 64-bit BAR, taking this slot and the next).
    Mem64,
}

/// A decoded, sized BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// I/O or memory, and the width of a memory BAR.
    pub kind: BarKind,
    /// Base address (a port number for [`BarKind::Io`]).
    pub address: u64,
    /// Size in bytes (ports), a power of two.
    pub size: u64,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

impl Bar {
    /// Whether this is a memory BAR.
    pub fn is_memory(&self) -> bool {
        self.kind != BarKind::Io
    }
}

impl core::fmt::Display for Bar {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.kind {
            BarKind::Io => write!(f, "io {:#x}+{:#x}", self.address, self.size),
            BarKind::Mem32 | BarKind::Mem64 => write!(
                f,
                "mem {:#x}+{:#x}{}{}",
                self.address,
                self.size,
                if self.kind == BarKind::Mem64 {
                    " 64-bit"
                } else {
                    ""
                },
                if self.prefetchable { " pf" } else { "" }
            ),
        }
    }
}

/// One function found by [`scan_bus0`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Where it is.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code.
    pub class: u8,
    /// Subclass.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Header type without the multi-function bit (0 device, 1 PCI bridge, 2 CardBus).
    pub header_type: u8,
    /// The multi-function bit of the header type.
    pub multifunction: bool,
    /// The BARs by slot; the upper slot of a 64-bit BAR, an unimplemented BAR and one
    /// whose value makes no sense are `None`.
    pub bars: [Option<Bar>; BAR_COUNT],
    /// Interrupt line (what firmware or the VMM routed the pin to; 0xFF: unknown).
    pub interrupt_line: u8,
    /// Interrupt pin (0 none, 1..=4 INTA#..INTD#; anything else is treated as none).
    pub interrupt_pin: u8,
}

impl Function {
    /// The interrupt line, if the function has a valid pin and the line was routed.
    pub fn irq(&self) -> Option<u8> {
        ((1..=4).contains(&self.interrupt_pin) && self.interrupt_line != 0xff)
            .then_some(self.interrupt_line)
    }

    /// Whether this is `class`/`subclass`.
    pub fn is(&self, class: u8, subclass: u8) -> bool {
        self.class == class && self.subclass == subclass
    }
}

impl core::fmt::Display for Function {
    /// One line: `00:03.0 8086:100e class 02.00.00 bar0 mem 0xfeb80000+0x20000 irq 11`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} class {:02x}.{:02x}.{:02x}",
            self.bdf, self.vendor, self.device, self.class, self.subclass, self.prog_if
        )?;
        if self.header_type != 0 {
            write!(f, " header {}", self.header_type)?;
        }
        for (i, b) in self.bars.iter().enumerate() {
            if let Some(b) = b {
                write!(f, " bar{i} {b}")?;
            }
        }
        match self.irq() {
            Some(l) => write!(
                f,
                " irq {l} (pin {})",
                (b'A' + self.interrupt_pin - 1) as char
            ),
            None => Ok(()),
        }
    }
}

/// Whether a vendor/device dword read says "no function here": vendor 0xFFFF (all ones
/// from an absent function, a master abort; no vendor has that ID) or 0 (what some
/// broken bridges return; Linux's `pci_bus_read_dev_vendor_id` skips both).
fn absent(id: u32) -> bool {
    matches!(id as u16, 0xffff | 0)
}

/// Lowest set bit of a BAR's size mask: the size, even when a hostile or broken device
/// answers the all-ones probe with a non-contiguous mask.
fn size_from_mask(mask: u64) -> u64 {
    mask & mask.wrapping_neg()
}

/// Reads and sizes the BARs of `bdf` (the first `count`), with I/O and memory decode off
/// around the all-ones probe (PCI 3.0, 6.2.5.1) so that the probe value never decodes,
/// then restores the BARs and the command register.
fn read_bars<C: ConfigAccess + ?Sized>(
    cfg: &mut C,
    bdf: Bdf,
    count: usize,
) -> [Option<Bar>; BAR_COUNT] {
    let mut bars = [None; BAR_COUNT];
    if count == 0 {
        return bars;
    }
    let cmd = cfg.read16(bdf, reg::COMMAND as u8);
    cfg.write16(
        bdf,
        reg::COMMAND as u8,
        cmd & !(command::IO_SPACE | command::MEMORY_SPACE),
    );
    let mut probe = |offset: u8| {
        let orig = cfg.read32(bdf, offset);
        cfg.write32(bdf, offset, !0);
        let mask = cfg.read32(bdf, offset);
        cfg.write32(bdf, offset, orig);
        (orig, mask)
    };
    let n = count.min(BAR_COUNT);
    let mut i = 0;
    while i < n {
        let slot = i;
        let (orig, mask) = probe(bar_offset(slot) as u8);
        i += 1;
        if orig & bar::IO != 0 {
            // x86 ports are 16 bits: bits above 15 of an I/O BAR do not decode.
            let size = size_from_mask(u64::from(mask & bar::IO_ADDRESS_MASK & 0xffff));
            let address = u64::from(orig & bar::IO_ADDRESS_MASK);
            if size != 0 && address + size <= 0x1_0000 {
                bars[slot] = Some(Bar {
                    kind: BarKind::Io,
                    address,
                    size,
                    prefetchable: false,
                });
            }
            continue;
        }
        let prefetchable = orig & bar::MEM_PREFETCH != 0;
        let (kind, address, mask) = match orig & bar::MEM_TYPE_MASK {
            // Type 1 ("below 1 MiB", PCI 2.x) decodes like a 32-bit BAR.
            0 | 2 => (
                BarKind::Mem32,
                u64::from(orig & bar::MEM_ADDRESS_MASK),
                u64::from(mask & bar::MEM_ADDRESS_MASK),
            ),
            bar::MEM_TYPE_64 if i < n => {
                let (orig_hi, mask_hi) = probe(bar_offset(i) as u8);
                i += 1;
                (
                    BarKind::Mem64,
                    u64::from(orig_hi) << 32 | u64::from(orig & bar::MEM_ADDRESS_MASK),
                    u64::from(mask_hi) << 32 | u64::from(mask & bar::MEM_ADDRESS_MASK),
                )
            }
            // A 64-bit BAR in the last slot, or the reserved type 3: unusable.
            _ => continue,
        };
        let size = size_from_mask(mask);
        let limit = if kind == BarKind::Mem32 {
            1 << 32
        } else {
            u64::MAX
        };
        if size != 0 && address.checked_add(size).is_some_and(|end| end <= limit) {
            bars[slot] = Some(Bar {
                kind,
                address,
                size,
                prefetchable,
            });
        }
    }
    cfg.write16(bdf, reg::COMMAND as u8, cmd);
    bars
}

/// Reads function `bdf`: `None` if nothing answers there.
pub fn read_function<C: ConfigAccess + ?Sized>(cfg: &mut C, bdf: Bdf) -> Option<Function> {
    let id = cfg.read32(bdf, reg::VENDOR_ID as u8);
    if absent(id) {
        return None;
    }
    let class = cfg.read32(bdf, reg::REVISION as u8);
    let header = cfg.read8(bdf, reg::HEADER_TYPE as u8);
    let header_type = header & 0x7f;
    let bar_count = match header_type {
        0 => BAR_COUNT,
        1 => 2,
        _ => 0,
    };
    let bars = read_bars(cfg, bdf, bar_count);
    let irq = cfg.read32(bdf, reg::INTERRUPT_LINE as u8);
    Some(Function {
        bdf,
        vendor: id as u16,
        device: (id >> 16) as u16,
        revision: class as u8,
        prog_if: (class >> 8) as u8,
        subclass: (class >> 16) as u8,
        class: (class >> 24) as u8,
        header_type,
        multifunction: header & 0x80 != 0,
        bars,
        interrupt_line: irq as u8,
        interrupt_pin: (irq >> 8) as u8,
    })
}

/// Every function on bus 0 (bridges are listed, not followed). A PC's host bridge is
/// 00:00.0: if nothing answers there, there is no PCI and the scan stops after one
/// read. Functions 1..8 of a device are read only when function 0 says multi-function
/// (as Linux does: single-function devices may ignore the function number and answer
/// for all eight).
pub fn scan_bus0<C: ConfigAccess + ?Sized>(cfg: &mut C) -> alloc::vec::Vec<Function> {
    let mut found = alloc::vec::Vec::new();
    for device in 0..32 {
        let Some(f0) = read_function(cfg, Bdf::new(0, device, 0)) else {
            if device == 0 {
                break;
            }
            continue;
        };
        let multi = f0.multifunction;
        found.push(f0);
        if multi {
            for function in 1..8 {
                found.extend(read_function(cfg, Bdf::new(0, device, function)));
            }
        }
    }
    found
}

/// Sets the `set` bits and clears the `clear` bits of `bdf`'s command register (see
/// [`command`]); returns the new value as read back.
pub fn update_command<C: ConfigAccess + ?Sized>(
    cfg: &mut C,
    bdf: Bdf,
    set: u16,
    clear: u16,
) -> u16 {
    let cmd = cfg.read16(bdf, reg::COMMAND as u8);
    cfg.write16(bdf, reg::COMMAND as u8, (cmd | set) & !clear);
    cfg.read16(bdf, reg::COMMAND as u8)
}

/// Turns on memory decode and bus mastering (a memory-BAR device that does DMA).
pub fn enable_memory_and_dma<C: ConfigAccess + ?Sized>(cfg: &mut C, bdf: Bdf) -> u16 {
    update_command(
        cfg,
        bdf,
        command::MEMORY_SPACE | command::BUS_MASTER,
        command::INTX_DISABLE,
    )
}

/// Turns on I/O decode and bus mastering (a port-I/O device that does DMA).
pub fn enable_io_and_dma<C: ConfigAccess + ?Sized>(cfg: &mut C, bdf: Bdf) -> u16 {
    update_command(
        cfg,
        bdf,
        command::IO_SPACE | command::BUS_MASTER,
        command::INTX_DISABLE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// One BAR slot of a fake function: `writable` bits take the value written, the
    /// rest read as `fixed` (the type bits, or hostile constants).
    #[derive(Clone, Copy, Default)]
    struct Slot {
        writable: u32,
        fixed: u32,
        value: u32,
    }

    struct FakeFn {
        space: [u8; CONFIG_SPACE_SIZE],
        bars: [Slot; BAR_COUNT],
    }

    impl FakeFn {
        fn new(vendor: u16, device: u16, class: [u8; 3], header: u8) -> Self {
            let mut space = [0u8; CONFIG_SPACE_SIZE];
            space[0..2].copy_from_slice(&vendor.to_le_bytes());
            space[2..4].copy_from_slice(&device.to_le_bytes());
            space[reg::PROG_IF] = class[2];
            space[reg::SUBCLASS] = class[1];
            space[reg::CLASS] = class[0];
            space[reg::HEADER_TYPE] = header;
            space[reg::INTERRUPT_LINE] = 0xff;
            // Decode on, as firmware leaves it; a status error bit (write one to clear)
            // that must survive command updates.
            space[reg::COMMAND] = (command::IO_SPACE | command::MEMORY_SPACE) as u8;
            space[reg::STATUS + 1] = 0x80;
            Self {
                space,
                bars: [Slot::default(); BAR_COUNT],
            }
        }

        /// A BAR of `size` (a power of two) at `address` with type bits `flags`.
        fn bar(mut self, i: usize, address: u32, size: u32, flags: u32) -> Self {
            self.bars[i] = Slot {
                writable: !(size - 1) & !0xf,
                fixed: flags,
                value: address,
            };
            self
        }

        fn raw_bar(mut self, i: usize, writable: u32, fixed: u32, value: u32) -> Self {
            self.bars[i] = Slot {
                writable,
                fixed,
                value,
            };
            self
        }

        fn irq(mut self, line: u8, pin: u8) -> Self {
            self.space[reg::INTERRUPT_LINE] = line;
            self.space[reg::INTERRUPT_PIN] = pin;
            self
        }

        fn command(&self) -> u16 {
            u16::from_le_bytes([self.space[4], self.space[5]])
        }

        fn bar_value(&self, i: usize) -> u32 {
            let s = self.bars[i];
            (s.value & s.writable) | s.fixed
        }
    }

    #[derive(Default)]
    struct FakeBus {
        fns: BTreeMap<Bdf, FakeFn>,
        /// All-ones BAR probes made while the function decoded, and dword writes over
        /// Command/Status.
        violations: Vec<String>,
    }

    impl FakeBus {
        fn with(mut self, bdf: Bdf, f: FakeFn) -> Self {
            self.fns.insert(bdf, f);
            self
        }
    }

    impl ConfigAccess for FakeBus {
        fn read32(&mut self, bdf: Bdf, offset: u8) -> u32 {
            let Some(f) = self.fns.get(&bdf) else {
                return !0;
            };
            let o = usize::from(offset & 0xfc);
            if (reg::BAR0..reg::BAR0 + 4 * BAR_COUNT).contains(&o) {
                return f.bar_value((o - reg::BAR0) / 4);
            }
            u32::from_le_bytes(f.space[o..o + 4].try_into().unwrap())
        }

        fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
            let Some(f) = self.fns.get_mut(&bdf) else {
                return;
            };
            let o = usize::from(offset & 0xfc);
            if (reg::BAR0..reg::BAR0 + 4 * BAR_COUNT).contains(&o) {
                let decoding = f.command() & (command::IO_SPACE | command::MEMORY_SPACE) != 0;
                if value == !0 && decoding {
                    self.violations
                        .push(format!("{bdf}: BAR probe with decode on"));
                }
                f.bars[(o - reg::BAR0) / 4].value = value;
            } else if o == reg::COMMAND {
                self.violations
                    .push(format!("{bdf}: dword write to command"));
            } else {
                f.space[o..o + 4].copy_from_slice(&value.to_le_bytes());
            }
        }

        fn write16(&mut self, bdf: Bdf, offset: u8, value: u16) {
            let Some(f) = self.fns.get_mut(&bdf) else {
                return;
            };
            let o = usize::from(offset & 0xfe);
            assert_eq!(o, reg::COMMAND, "only the command register is written");
            f.space[o..o + 2].copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Mechanism #1 over ports, backed by a fake bus: checks the address encoding.
    struct Ports {
        bus: FakeBus,
        address: u32,
    }

    impl Ports {
        fn target(&self) -> Option<(Bdf, u8)> {
            let a = self.address;
            (a & CONFIG_ENABLE != 0).then(|| {
                (
                    Bdf::new((a >> 16) as u8, (a >> 11) as u8 & 0x1f, (a >> 8) as u8 & 7),
                    a as u8 & 0xfc,
                )
            })
        }
    }

    impl crate::PortIo for Ports {
        fn read8(&mut self, port: u16) -> u8 {
            (self.read32(port & !3) >> (8 * (port & 3))) as u8
        }
        fn read16(&mut self, port: u16) -> u16 {
            (self.read32(port & !3) >> (8 * (port & 2))) as u16
        }
        fn read32(&mut self, port: u16) -> u32 {
            match (port, self.target()) {
                (CONFIG_ADDRESS, _) => self.address,
                (CONFIG_DATA, Some((bdf, o))) => self.bus.read32(bdf, o),
                _ => !0,
            }
        }
        fn write8(&mut self, _: u16, _: u8) {
            panic!("no byte writes");
        }
        fn write16(&mut self, port: u16, value: u16) {
            let (bdf, o) = self.target().expect("address selected");
            assert_eq!(port & !3, CONFIG_DATA);
            self.bus.write16(bdf, o | (port as u8 & 2), value);
        }
        fn write32(&mut self, port: u16, value: u32) {
            match (port, self.target()) {
                (CONFIG_ADDRESS, _) => self.address = value,
                (CONFIG_DATA, Some((bdf, o))) => self.bus.write32(bdf, o, value),
                _ => panic!("write to port {port:#x}"),
            }
        }
    }

    const HOST: [u8; 3] = [class::BRIDGE, class::BRIDGE_HOST, 0];

    /// QEMU `-M pc`'s layout, plus a 64-bit prefetchable BAR.
    fn pc() -> FakeBus {
        FakeBus::default()
            .with(Bdf::new(0, 0, 0), FakeFn::new(0x8086, 0x1237, HOST, 0))
            .with(
                Bdf::new(0, 1, 0),
                FakeFn::new(0x8086, 0x7000, [class::BRIDGE, class::BRIDGE_ISA, 0], 0x80),
            )
            .with(
                Bdf::new(0, 1, 1),
                FakeFn::new(
                    0x8086,
                    0x7010,
                    [class::STORAGE, class::STORAGE_IDE, 0x80],
                    0,
                )
                .bar(4, 0xc040, 16, bar::IO),
            )
            .with(
                Bdf::new(0, 3, 0),
                FakeFn::new(0x8086, 0x100e, [class::NETWORK, 0, 0], 0)
                    .bar(0, 0xfeb8_0000, 0x2_0000, 0)
                    .bar(1, 0xc000, 0x40, bar::IO)
                    .irq(11, 1),
            )
            .with(
                Bdf::new(0, 4, 0),
                FakeFn::new(0x1af4, 0x1000, [class::NETWORK, 0, 0], 0)
                    .bar(2, 0x4000, 0x4000, bar::MEM_TYPE_64 | bar::MEM_PREFETCH)
                    .raw_bar(3, !0, 0, 8)
                    .irq(10, 1),
            )
    }

    #[test]
    fn scans_the_pc_layout_through_mechanism_1() {
        let mut cfg = Mechanism1::new(Ports {
            bus: pc(),
            address: 0,
        });
        let found = scan_bus0(&mut cfg);
        let bus = cfg.into_inner().bus;
        assert!(bus.violations.is_empty(), "{:?}", bus.violations);
        let bdfs: Vec<_> = found.iter().map(|f| f.bdf.to_string()).collect();
        assert_eq!(
            bdfs,
            ["00:00.0", "00:01.0", "00:01.1", "00:03.0", "00:04.0"]
        );

        let ide = &found[2];
        assert!(ide.is(class::STORAGE, class::STORAGE_IDE));
        assert_eq!(ide.prog_if, 0x80);
        assert_eq!(
            ide.bars[4],
            Some(Bar {
                kind: BarKind::Io,
                address: 0xc040,
                size: 16,
                prefetchable: false
            })
        );
        assert_eq!(ide.irq(), None);

        let nic = &found[3];
        assert_eq!((nic.vendor, nic.device), (VENDOR_INTEL, 0x100e));
        assert_eq!(nic.bars[0].unwrap().address, 0xfeb8_0000);
        assert_eq!(nic.bars[0].unwrap().size, 0x2_0000);
        assert_eq!(nic.bars[0].unwrap().kind, BarKind::Mem32);
        assert_eq!(nic.bars[1].unwrap().size, 0x40);
        assert_eq!(nic.irq(), Some(11));
        assert_eq!(
            nic.to_string(),
            "00:03.0 8086:100e class 02.00.00 bar0 mem 0xfeb80000+0x20000 bar1 io 0xc000+0x40 \
             irq 11 (pin A)"
        );

        let big = &found[4];
        assert_eq!(
            big.bars[2],
            Some(Bar {
                kind: BarKind::Mem64,
                address: 0x8_0000_4000,
                size: 0x4000,
                prefetchable: true
            })
        );
        assert_eq!(big.bars[3], None, "the upper half is not a BAR of its own");

        // Every BAR and command register is as the firmware left it.
        let fresh = pc();
        for (bdf, f) in &bus.fns {
            let g = &fresh.fns[bdf];
            assert_eq!(f.command(), g.command(), "{bdf}");
            for i in 0..BAR_COUNT {
                assert_eq!(f.bar_value(i), g.bar_value(i), "{bdf} bar{i}");
            }
        }
    }

    #[test]
    fn no_host_bridge_no_pci() {
        let mut bus = FakeBus::default().with(Bdf::new(0, 5, 0), FakeFn::new(0x8086, 1, HOST, 0));
        assert!(scan_bus0(&mut bus).is_empty());
        // The absent-function values of broken bridges.
        for id in [0u32, 0xffff, 0xffff_0000] {
            let mut f = FakeFn::new(0, 0, HOST, 0);
            f.space[0..4].copy_from_slice(&id.to_le_bytes());
            let mut bus = FakeBus::default().with(Bdf::new(0, 0, 0), f);
            assert!(scan_bus0(&mut bus).is_empty(), "{id:#x}");
        }
    }

    #[test]
    fn the_multi_function_bit_decides_and_may_lie() {
        // Bit set, no other functions: only function 0.
        let mut bus =
            FakeBus::default().with(Bdf::new(0, 0, 0), FakeFn::new(0x8086, 0x1237, HOST, 0x80));
        assert_eq!(scan_bus0(&mut bus).len(), 1);
        // Bit clear, function 3 answers anyway: not scanned (it may be function 0
        // answering for every function number).
        let mut bus = FakeBus::default()
            .with(Bdf::new(0, 0, 0), FakeFn::new(0x8086, 0x1237, HOST, 0))
            .with(Bdf::new(0, 0, 3), FakeFn::new(0x8086, 0x1237, HOST, 0));
        assert_eq!(scan_bus0(&mut bus).len(), 1);
        // The bit on function 1 means nothing; vendor 0xFFFF in between is skipped.
        let mut bus = FakeBus::default()
            .with(Bdf::new(0, 0, 0), FakeFn::new(0x8086, 0x1237, HOST, 0x80))
            .with(Bdf::new(0, 0, 1), FakeFn::new(0xffff, 0x1234, HOST, 0x80))
            .with(Bdf::new(0, 0, 7), FakeFn::new(0x8086, 0x7, HOST, 0x80));
        let found = scan_bus0(&mut bus);
        let bdfs: Vec<_> = found.iter().map(|f| f.bdf.to_string()).collect();
        assert_eq!(bdfs, ["00:00.0", "00:00.7"]);
    }

    #[test]
    fn hostile_bars_are_dropped_not_trusted() {
        let f = FakeFn::new(0x1234, 0x5678, [0xff, 0, 0], 0)
            // Unimplemented: reads 0 whatever is written.
            .raw_bar(0, 0, 0, 0)
            // All ones, always: an I/O BAR of 4 ports at 0xFFFFFFFC, beyond 16 bits.
            .raw_bar(1, 0, !0, 0)
            // A mask with holes: the lowest set bit is the size.
            .raw_bar(2, 0xfff0_f000, 0, 0x1000_0000)
            // Type 1 (PCI 2.x "below 1 MiB"): decodes as a 32-bit BAR.
            .raw_bar(3, 0xffff_f000, 0x2, 0xd000)
            // Reserved memory type 3.
            .raw_bar(4, 0xffff_f000, 0x6, 0x1000)
            // A 64-bit BAR in the last slot: no upper half.
            .raw_bar(5, 0xffff_f000, bar::MEM_TYPE_64, 0x2000)
            .irq(9, 7);
        let mut bus = FakeBus::default().with(Bdf::new(0, 0, 0), f);
        let found = scan_bus0(&mut bus);
        assert!(bus.violations.is_empty(), "{:?}", bus.violations);
        let bars = found[0].bars;
        assert_eq!(bars[0], None);
        assert_eq!(bars[1], None);
        assert_eq!(
            bars[2],
            Some(Bar {
                kind: BarKind::Mem32,
                address: 0x1000_0000,
                size: 0x1000,
                prefetchable: false
            })
        );
        assert_eq!(
            bars[3].map(|b| (b.kind, b.address, b.size)),
            Some((BarKind::Mem32, 0xd000, 0x1000))
        );
        assert_eq!(bars[4..], [None; 2]);
        assert_eq!(found[0].irq(), None, "pin 7 does not exist");

        // An I/O BAR at the top of the port space fits; one with an address bit above
        // the 16 port bits does not.
        let f = FakeFn::new(0x1234, 0x5678, HOST, 0)
            .raw_bar(0, 0xfffc, bar::IO, 0xfffc)
            .raw_bar(1, 0xfff0, bar::IO | 0x1_0000, 0x1000);
        let mut bus = FakeBus::default().with(Bdf::new(0, 0, 0), f);
        let bars = scan_bus0(&mut bus)[0].bars;
        assert_eq!(bars[0].map(|b| (b.address, b.size)), Some((0xfffc, 4)));
        assert_eq!(bars[1], None);

        // A 64-bit BAR whose mask is all ones in both halves: 16 bytes at the very top
        // of the address space, which would wrap.
        let f = FakeFn::new(0x1234, 0x5678, HOST, 0)
            .raw_bar(0, 0, 0xffff_fff0 | bar::MEM_TYPE_64, 0)
            .raw_bar(1, 0, !0, 0);
        let mut bus = FakeBus::default().with(Bdf::new(0, 0, 0), f);
        assert_eq!(scan_bus0(&mut bus)[0].bars, [None; BAR_COUNT]);
    }

    #[test]
    fn bridges_have_two_bars_and_other_headers_none() {
        let bridge = FakeFn::new(0x8086, 0x1, [class::BRIDGE, 4, 0], 1)
            .bar(0, 0xe000_0000, 0x1000, 0)
            .raw_bar(2, !0, 0, 0x100); // primary/secondary bus numbers, not a BAR
        let odd = FakeFn::new(0x8086, 0x2, HOST, 0x7f).bar(0, 0xe000_1000, 0x1000, 0);
        let mut bus = FakeBus::default()
            .with(Bdf::new(0, 0, 0), bridge)
            .with(Bdf::new(0, 1, 0), odd);
        let found = scan_bus0(&mut bus);
        assert_eq!(found[0].header_type, 1);
        assert!(found[0].bars[0].is_some());
        assert_eq!(found[0].bars[2], None);
        assert_eq!(found[1].bars, [None; BAR_COUNT]);
        assert!(bus.violations.is_empty(), "{:?}", bus.violations);
    }

    #[test]
    fn command_updates_leave_status_alone() {
        let mut bus = pc();
        let nic = Bdf::new(0, 3, 0);
        bus.fns.get_mut(&nic).unwrap().space[reg::COMMAND + 1] = (command::INTX_DISABLE >> 8) as u8;
        let cmd = enable_memory_and_dma(&mut bus, nic);
        assert_eq!(
            cmd,
            command::IO_SPACE | command::MEMORY_SPACE | command::BUS_MASTER
        );
        assert_eq!(bus.fns[&nic].space[reg::STATUS + 1], 0x80);
        let cmd = update_command(&mut bus, nic, 0, command::IO_SPACE);
        assert_eq!(cmd, command::MEMORY_SPACE | command::BUS_MASTER);
        assert_eq!(
            enable_io_and_dma(&mut bus, Bdf::new(0, 1, 1)),
            command::IO_SPACE | command::MEMORY_SPACE | command::BUS_MASTER
        );
        assert!(bus.violations.is_empty(), "{:?}", bus.violations);
    }
}
