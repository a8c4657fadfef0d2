//! PCI configuration space (PCI Local Bus Specification 3.0, chapter 6: the type-0
//! header) and configuration mechanism #1 (ports 0xCF8/0xCFC).
//!
//! The offsets and bits here are shared by the shim's PCI bus and device models and by
//! the guest's enumeration.

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
