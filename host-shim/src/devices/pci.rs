//! PCI devices: the [`PciDevice`] trait every PCI model implements, and
//! [`ConfigSpace`], the type-0 configuration header they embed (vendor and class,
//! command and status, BARs that the guest sizes and moves, interrupt line and pin).
//!
//! Layouts come from `hw_devices::pci`, shared with the guest's enumeration. The bus
//! that routes configuration mechanism #1 to functions and maps their BARs onto the
//! port and memory [`super::Bus`]es builds on this.
//!
//! A BAR is on the bus only while its decode is on (command `IO_SPACE` or
//! `MEMORY_SPACE`) and its address is usable: not 0, and for an I/O BAR inside the
//! 64 KiB port space (QEMU's rule in `pci_bar_address`). [`ConfigSpace::mapped_bars`]
//! says what should be mapped now; the bus ([`super::pci_bus`]) compares it with what
//! it mapped after each configuration write and moves the ranges.

pub use hw_devices::pci::CONFIG_SPACE_SIZE;
use hw_devices::pci::{BAR_COUNT, bar, bar_offset, command, reg, status};

/// The address space a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// Port I/O.
    Io,
    /// 32-bit memory space.
    Memory32,
}

/// A BAR that is decoding now: what the bus must map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedBar {
    /// BAR index, 0..6.
    pub index: usize,
    /// Port or memory space.
    pub kind: BarKind,
    /// Base address (a port number for [`BarKind::Io`]).
    pub base: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}

/// Identity of a function, as its header reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciIds {
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
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

#[derive(Clone, Copy, Debug)]
struct BarDef {
    kind: BarKind,
    size: u64,
}

/// A type-0 configuration header with byte-granular write masks.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
    /// Bits the guest may change, per byte.
    wmask: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<BarDef>; BAR_COUNT],
}

impl ConfigSpace {
    /// A header with these ids, every other register zero and read-only except the
    /// command register's I/O, memory, bus-master and INTx-disable bits, the cache line
    /// size, the latency timer and the interrupt line.
    pub fn new(ids: PciIds) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            bars: [None; BAR_COUNT],
        };
        c.set16(reg::VENDOR_ID, ids.vendor);
        c.set16(reg::DEVICE_ID, ids.device);
        c.bytes[reg::REVISION] = ids.revision;
        c.bytes[reg::PROG_IF] = ids.prog_if;
        c.bytes[reg::SUBCLASS] = ids.subclass;
        c.bytes[reg::CLASS] = ids.class;
        c.set16(reg::SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor);
        c.set16(reg::SUBSYSTEM_ID, ids.subsystem);
        let cmd =
            command::IO_SPACE | command::MEMORY_SPACE | command::BUS_MASTER | command::INTX_DISABLE;
        c.wmask[reg::COMMAND..reg::COMMAND + 2].copy_from_slice(&cmd.to_le_bytes());
        c.wmask[reg::CACHE_LINE_SIZE] = 0xff;
        c.wmask[reg::LATENCY_TIMER] = 0xff;
        c.wmask[reg::INTERRUPT_LINE] = 0xff;
        c
    }

    /// Declares BAR `index` (0..6) of `kind` and `size` bytes (a power of two, at least
    /// 4 for I/O and 16 for memory). A device calls this while it is built; a bad
    /// definition is a bug in the model and panics.
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) {
        let min = match kind {
            BarKind::Io => 4,
            BarKind::Memory32 => 16,
        };
        assert!(index < BAR_COUNT, "BAR index {index}");
        assert!(
            size.is_power_of_two() && size >= min && size <= 1 << 31,
            "BAR size {size:#x}"
        );
        self.bars[index] = Some(BarDef { kind, size });
        let off = bar_offset(index);
        let (flags, low_mask) = match kind {
            BarKind::Io => (bar::IO, bar::IO_ADDRESS_MASK),
            BarKind::Memory32 => (0, bar::MEM_ADDRESS_MASK),
        };
        let mask = low_mask & !(size as u32 - 1);
        self.set32(off, flags);
        self.wmask[off..off + 4].copy_from_slice(&mask.to_le_bytes());
    }

    /// Sets the header type register (bit 7: multi-function device; a bridge model
    /// sets it on function 0 so that the guest probes functions 1..8).
    pub fn set_header_type(&mut self, header_type: u8) {
        self.bytes[reg::HEADER_TYPE] = header_type;
    }

    /// Sets device-specific registers (offset 0x40 and up: the header's own registers
    /// have their own setters) to `value`, with `writable` as the bits the guest may
    /// change, byte for byte. A model calls this while it is built; an offset inside
    /// the header or past the configuration space is a bug in the model and panics.
    pub fn set_device_specific(&mut self, offset: usize, value: &[u8], writable: &[u8]) {
        assert!(
            offset >= DEVICE_SPECIFIC_START
                && value.len() == writable.len()
                && offset + value.len() <= CONFIG_SPACE_SIZE,
            "device-specific registers at {offset:#x}+{}",
            value.len()
        );
        self.bytes[offset..offset + value.len()].copy_from_slice(value);
        self.wmask[offset..offset + value.len()].copy_from_slice(writable);
    }

    /// Adds a capability (`id`, then `body`: the bytes after the ID and next-pointer
    /// bytes) at `offset` in the device-specific area, chained at the end of the list,
    /// with `writable` the bits of `body` the guest may change; sets the status
    /// register's capabilities bit. A model calls this while it is built; a bad offset
    /// is a bug in the model and panics.
    pub fn add_capability(&mut self, offset: usize, id: u8, body: &[u8], writable: &[u8]) {
        assert!(offset.is_multiple_of(4), "capability at {offset:#x}");
        let mut value = vec![id, 0];
        value.extend_from_slice(body);
        let mut mask = vec![0, 0];
        mask.extend_from_slice(writable);
        self.set_device_specific(offset, &value, &mask);
        // Chain it: the header's pointer, or the last capability's next byte.
        let mut at = reg::CAPABILITIES;
        while self.bytes[at] != 0 {
            at = usize::from(self.bytes[at]) + 1;
        }
        self.bytes[at] = offset as u8;
        let s = self.get16(reg::STATUS) | status::CAPABILITIES_LIST;
        self.set16(reg::STATUS, s);
    }

    /// Sets the interrupt pin (1 = INTA# .. 4 = INTD#; 0 = none).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.bytes[reg::INTERRUPT_PIN] = pin;
    }

    /// Sets the interrupt line register (what firmware would have written).
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.bytes[reg::INTERRUPT_LINE] = line;
    }

    /// The interrupt line register.
    pub fn interrupt_line(&self) -> u8 {
        self.bytes[reg::INTERRUPT_LINE]
    }

    /// The interrupt pin register.
    pub fn interrupt_pin(&self) -> u8 {
        self.bytes[reg::INTERRUPT_PIN]
    }

    /// Sets or clears the status register's interrupt bit (the model calls this when
    /// its INTx# output changes).
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let mut s = self.get16(reg::STATUS);
        if asserted {
            s |= status::INTERRUPT;
        } else {
            s &= !status::INTERRUPT;
        }
        self.set16(reg::STATUS, s);
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.get16(reg::COMMAND)
    }

    /// Whether the function may master the bus (DMA). A model refuses to DMA without
    /// it, as the real device would not be able to.
    pub fn bus_master(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }

    /// Whether INTx# is disabled by the command register: the model's interrupt
    /// output must stay low (its status bit still reflects the condition).
    pub fn intx_disabled(&self) -> bool {
        self.command() & command::INTX_DISABLE != 0
    }

    /// Reads `data.len()` bytes at `offset`. Bytes beyond the header read as zero; any
    /// offset and length are accepted (the guest controls both).
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = offset
                .checked_add(i)
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes `data` at `offset`, changing only writable bits. Writes beyond the
    /// header are dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &d) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|&o| o < CONFIG_SPACE_SIZE) else {
                break;
            };
            let m = self.wmask[o];
            self.bytes[o] = (self.bytes[o] & !m) | (d & m);
        }
    }

    /// The 32-bit register at `offset` (dword aligned).
    pub fn read32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset & !3, &mut b);
        u32::from_le_bytes(b)
    }

    /// The BARs that decode now, in index order.
    pub fn mapped_bars(&self) -> Vec<MappedBar> {
        let cmd = self.command();
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(index, def)| {
                let def = (*def)?;
                let raw = self.get32(bar_offset(index));
                let (on, base, limit) = match def.kind {
                    BarKind::Io => (
                        cmd & command::IO_SPACE != 0,
                        u64::from(raw & bar::IO_ADDRESS_MASK),
                        0x1_0000,
                    ),
                    BarKind::Memory32 => (
                        cmd & command::MEMORY_SPACE != 0,
                        u64::from(raw & bar::MEM_ADDRESS_MASK),
                        1 << 32,
                    ),
                };
                (on && base != 0 && base + def.size <= limit).then_some(MappedBar {
                    index,
                    kind: def.kind,
                    base,
                    size: def.size,
                })
            })
            .collect()
    }

    fn get16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }

    fn set16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn get32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[off..off + 4]);
        u32::from_le_bytes(b)
    }

    fn set32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
}

/// First offset after the type-0 header: the device-specific registers.
pub const DEVICE_SPECIFIC_START: usize = 0x40;

/// A PCI function: its configuration header and its register regions.
///
/// Regions are numbered: 0..6 are the BARs; a device with fixed legacy ranges (the
/// PIIX IDE's compatibility-mode ports) numbers them from [`LEGACY_REGION_BASE`] and
/// lists them in [`PciDevice::legacy_ranges`]. Accesses may have any length and offset;
/// a model never panics on them.
pub trait PciDevice: Send {
    /// The configuration header.
    fn config(&self) -> &ConfigSpace;

    /// The configuration header, to change.
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// Handles a configuration read (the default reads the header). A model with
    /// registers beyond the standard header that read differently from what was
    /// written overrides this.
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// Handles a configuration write (the default applies it to the header). A model
    /// that reacts to a register (the command register's INTx disable, say) overrides
    /// this and still applies the write through [`ConfigSpace::write`].
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }

    /// Reads from region `region` at `offset`.
    fn region_read(&mut self, region: usize, offset: u64, data: &mut [u8]);

    /// Writes to region `region` at `offset`.
    fn region_write(&mut self, region: usize, offset: u64, data: &[u8]);

    /// Doorbells in region `region` (a memory BAR): offsets whose writes only signal
    /// the event, so the bus has KVM absorb them (an ioeventfd) while the BAR is mapped
    /// there; such writes never reach [`PciDevice::region_write`].
    fn doorbells(
        &self,
        _region: usize,
    ) -> Vec<(u64, std::sync::Arc<vmm_sys_util::eventfd::EventFd>)> {
        Vec::new()
    }

    /// Fixed ranges the device decodes whatever its BARs say: (space, base, length,
    /// region number >= [`LEGACY_REGION_BASE`]).
    fn legacy_ranges(&self) -> Vec<(BarKind, u64, u64, usize)> {
        Vec::new()
    }

    /// The device's counters for `--stats`.
    fn stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// A PCI model shared between the bus (configuration cycles, BAR accesses) and whoever
/// else drives it (a device's worker thread).
pub type SharedPciDevice = std::sync::Arc<std::sync::Mutex<dyn PciDevice>>;

/// First region number of a device's fixed legacy ranges.
pub const LEGACY_REGION_BASE: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    fn nic() -> ConfigSpace {
        let mut c = ConfigSpace::new(PciIds {
            vendor: 0x8086,
            device: 0x100e,
            class: 2,
            ..Default::default()
        });
        c.add_bar(0, BarKind::Memory32, 0x20000);
        c.add_bar(1, BarKind::Io, 0x40);
        c.set_interrupt_pin(1);
        c
    }

    #[test]
    fn ids_are_read_only_and_bars_size_like_hardware() {
        let mut c = nic();
        assert_eq!(c.read32(0), 0x100e_8086);
        c.write(0, &[0; 4]);
        assert_eq!(c.read32(0), 0x100e_8086);
        // Sizing: all ones, read back the mask.
        c.write(0x10, &[0xff; 4]);
        assert_eq!(c.read32(0x10), 0xfffe_0000);
        c.write(0x14, &[0xff; 4]);
        assert_eq!(c.read32(0x14), 0xffff_ffc1);
        // Unimplemented BARs read zero and stay zero.
        c.write(0x18, &[0xff; 4]);
        assert_eq!(c.read32(0x18), 0);
        // Pin read-only, line read-write.
        c.write(0x3c, &[11, 3]);
        assert_eq!(c.interrupt_line(), 11);
        assert_eq!(c.interrupt_pin(), 1);
    }

    #[test]
    fn bars_map_only_with_decode_on_and_a_usable_address() {
        let mut c = nic();
        c.write(0x10, &0xfebc_0000u32.to_le_bytes());
        c.write(0x14, &0xc000u32.to_le_bytes());
        assert!(c.mapped_bars().is_empty(), "decode is off");
        c.write(4, &[command::MEMORY_SPACE as u8, 0]);
        assert_eq!(
            c.mapped_bars(),
            vec![MappedBar {
                index: 0,
                kind: BarKind::Memory32,
                base: 0xfebc_0000,
                size: 0x20000
            }]
        );
        c.write(4, &[(command::MEMORY_SPACE | command::IO_SPACE) as u8, 0]);
        assert_eq!(c.mapped_bars().len(), 2);
        // An I/O BAR beyond the port space is not mapped (QEMU's rule).
        c.write(0x14, &0x1_0000u32.to_le_bytes());
        assert_eq!(c.mapped_bars().len(), 1);
        // Byte-wise BAR writes work, and low bits stay the BAR's flags.
        c.write(0x15, &[0xd0]);
        assert_eq!(c.read32(0x14), 0x1_d001);
    }

    #[test]
    fn any_offset_and_length_is_harmless() {
        let mut c = nic();
        let mut big = [0u8; 8];
        c.read(usize::MAX - 2, &mut big);
        assert_eq!(big, [0; 8]);
        c.write(250, &[0xff; 16]);
        c.write(usize::MAX, &[1, 2]);
        c.read(252, &mut big);
        assert_eq!(&big[4..], &[0; 4]);
    }

    #[test]
    fn device_specific_registers_keep_their_write_mask() {
        let mut c = nic();
        c.set_device_specific(0x40, &[0x00, 0x80], &[0xff, 0x80]);
        assert_eq!(c.read32(0x40) & 0xffff, 0x8000);
        c.write(0x40, &[0x12, 0x00]);
        assert_eq!(c.read32(0x40) & 0xffff, 0x0012, "writable bits change");
        c.write(0x41, &[0xff]);
        assert_eq!(c.read32(0x40) & 0xffff, 0x8012, "read-only bits do not");
    }
}
