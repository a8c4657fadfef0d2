//! The two functions of the PC chipset that QEMU's `pc` machine puts on PCI bus 0:
//! the i440FX host bridge (Intel 82441FX PMC, 8086:1237, class 06/00) at 00:00.0 and
//! the PIIX3 PCI-to-ISA bridge (Intel 82371SB function 0, 8086:7000, class 06/01) at
//! 00:01.0 (Intel 82371FB/SB datasheet, PCI configuration registers).
//!
//! Neither has BARs. Memory and interrupt routing registers are not modelled: guest RAM
//! is fixed by the shim, and PCI INTx goes straight to IOAPIC pins 16..23 (see
//! [`super::pci_bus`]), so the PIIX3's PIRQ route control registers (0x60..0x63) read
//! 0x80, "routing disabled", and ignore writes.

use hw_devices::pci::{VENDOR_INTEL, class};

use super::pci::{ConfigSpace, PciDevice, PciIds};

/// The i440FX host bridge.
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    /// The bridge as QEMU presents it (revision 2).
    pub fn new() -> Self {
        Self {
            config: ConfigSpace::new(PciIds {
                vendor: VENDOR_INTEL,
                device: 0x1237,
                revision: 0x02,
                class: class::BRIDGE,
                subclass: class::BRIDGE_HOST,
                ..Default::default()
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn region_read(&mut self, _region: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn region_write(&mut self, _region: usize, _offset: u64, _data: &[u8]) {}
}

/// PIIX3 PIRQ route control registers, PIRQRC[A..D].
pub const PIRQRC: std::ops::Range<usize> = 0x60..0x64;
/// PIRQRC value: routing to ISA disabled.
pub const PIRQ_DISABLED: u8 = 0x80;

/// The PIIX3 ISA bridge, function 0 of a multi-function device.
pub struct Piix3Isa {
    config: ConfigSpace,
}

impl Piix3Isa {
    /// The bridge with the multi-function bit set, so that 00:01.1 (IDE) is probed.
    pub fn new() -> Self {
        let mut config = ConfigSpace::new(PciIds {
            vendor: VENDOR_INTEL,
            device: 0x7000,
            class: class::BRIDGE,
            subclass: class::BRIDGE_ISA,
            ..Default::default()
        });
        config.set_header_type(0x80);
        Self { config }
    }
}

impl Default for Piix3Isa {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for Piix3Isa {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
        for (i, d) in data.iter_mut().enumerate() {
            if offset.checked_add(i).is_some_and(|o| PIRQRC.contains(&o)) {
                *d = PIRQ_DISABLED;
            }
        }
    }

    fn region_read(&mut self, _region: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn region_write(&mut self, _region: usize, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_class_and_pirq_registers() {
        let mut host = HostBridge::new();
        assert_eq!(host.config().read32(0), 0x1237_8086);
        assert_eq!(host.config().read32(8) >> 8, 0x06_00_00);
        let mut isa = Piix3Isa::new();
        assert_eq!(isa.config().read32(0), 0x7000_8086);
        assert_eq!(isa.config().read32(8) >> 8, 0x06_01_00);
        assert_eq!(isa.config().read32(0xc) >> 16 & 0xff, 0x80);
        let mut b = [0u8; 4];
        isa.config_write(0x60, &[0x0b; 4]);
        isa.config_read(0x5e, &mut b);
        assert_eq!(b, [0, 0, 0x80, 0x80]);
        host.config_read(0x60, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
